"""The shared Transformer layers: the same function as torch's modules, and dropout drawn with the right law."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hrlf.models.layers as layers
from hrlf.models.layers import DecoderLayer, DecoderStack, Dropout, EncoderLayer, EncoderStack, inverted_dropout

D, HEADS, LAYERS = 40, 10, 3


def _pair(seed: int = 5, dropout: float = 0.1) -> tuple[nn.TransformerEncoder, EncoderStack]:
    """torch's pre-norm encoder and the project's, each built right after ``manual_seed(seed)``."""
    torch.manual_seed(seed)
    ref_layer = nn.TransformerEncoderLayer(
        D, HEADS, dim_feedforward=4 * D, dropout=dropout, batch_first=True, norm_first=True
    )
    ref = nn.TransformerEncoder(ref_layer, LAYERS, norm=nn.LayerNorm(D), enable_nested_tensor=False)
    torch.manual_seed(seed)
    ours = EncoderStack(EncoderLayer(D, HEADS, dim_feedforward=4 * D, dropout=dropout), LAYERS, d_model=D)
    return ref, ours


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(6, 9, D, generator=torch.Generator().manual_seed(0))
    padding = torch.zeros(6, 9, dtype=torch.bool)
    padding[:3, 5:] = True  # three short clips, post-padded
    padding[3, :2] = True  # one pre-padded
    return x, padding


def _same_state(ref: nn.Module, ours: nn.Module) -> None:
    """The same state-dict keys in the same order, holding identical tensors."""
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _same_output_and_gradients(ref: nn.Module, ours: nn.Module, y_ref: torch.Tensor, y_ours: torch.Tensor) -> None:
    """The two outputs agree, and so do every parameter's gradients under one random upstream gradient (the sum
    of squares of a LayerNorm output is nearly constant, its gradient ~0)."""
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1))
    y_ref.backward(upstream)
    y_ours.backward(upstream)
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters(), strict=True):
        assert p_ref.grad is not None and p_ours.grad is not None
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_same_parameter_names_and_initial_weights_as_torch():
    """checkpoints written with torch's layers load unchanged, and a seed gives the same initial network."""
    ref, ours = _pair()
    _same_state(ref, ours)


def test_same_function_as_torch_in_evaluation():
    ref, ours = _pair()
    ref.eval(), ours.eval()
    x, padding = _inputs()
    torch.testing.assert_close(ours(x, padding=padding), ref(x, src_key_padding_mask=padding), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_same_training_step_as_torch_with_torchs_dropout_stream(monkeypatch):
    """with ``F.dropout`` in place of the cheaper draw, a seed drops the same elements as torch's layers: outputs
    and gradients agree, so the only difference in training is which elements a seed drops."""
    monkeypatch.setattr(layers, "dropout_keep", lambda x, p: torch.empty_like(x).bernoulli_(1 - p).bool())
    ref, ours = _pair()
    ref.train(), ours.train()
    x, padding = _inputs()
    torch.manual_seed(3)
    y_ref = ref(x, src_key_padding_mask=padding)
    torch.manual_seed(3)
    y_ours = ours(x, padding=padding)
    _same_output_and_gradients(ref, ours, y_ref, y_ours)


def test_padding_is_invisible_in_training_too():
    """what sits at padded keys changes nothing, with dropout on (same seed, same drops)."""
    _, ours = _pair()
    ours.train()
    x, padding = _inputs()
    noisy = torch.where(padding.unsqueeze(-1), torch.randn_like(x) * 100, x)
    torch.manual_seed(4)
    a = ours(x, padding=padding)
    torch.manual_seed(4)
    b = ours(noisy, padding=padding)
    real = ~padding
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_inverted_dropout_drops_a_fraction_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    n = 2_000_000
    out = inverted_dropout(torch.ones(n), p)
    dropped = float((out == 0).double().mean())
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(dropped - p) < 5 * sigma
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1.0 / (1.0 - p)))
    assert abs(float(out.double().mean()) - 1.0) < 5 * sigma / (1 - p)


def test_inverted_dropout_draws_elements_independently():
    """neighbouring elements (the two halves of one 64-bit word, adjacent words) are dropped independently."""
    torch.manual_seed(1)
    drop = inverted_dropout(torch.ones(1_000_000), 0.5) == 0
    pairs = drop.view(-1, 2)
    both = float((pairs[:, 0] & pairs[:, 1]).double().mean())
    assert abs(both - 0.25) < 5 * (0.25 * 0.75 / pairs.shape[0]) ** 0.5
    across = float((drop[1:-1:2] & drop[2::2]).double().mean())  # second half of a word, first of the next
    assert abs(across - 0.25) < 5 * (0.25 * 0.75 / drop[2::2].shape[0]) ** 0.5


def test_inverted_dropout_is_seeded_and_its_gradient_is_the_mask():
    x = torch.randn(4, 7, 5, requires_grad=True)
    torch.manual_seed(2)
    a = inverted_dropout(x, 0.3)
    torch.manual_seed(2)
    b = inverted_dropout(x, 0.3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    a.sum().backward()
    assert x.grad is not None
    mask = (a != 0).to(x.dtype) / 0.7
    torch.testing.assert_close(x.grad, mask)


def test_inverted_dropout_keeps_a_non_contiguous_layout_and_p_zero_is_the_identity():
    x = torch.randn(5, 3, 8).transpose(0, 1)  # (3, 5, 8) view
    torch.manual_seed(0)
    out = inverted_dropout(x, 0.25)
    assert out.shape == x.shape
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert inverted_dropout(x, 0.0) is x


def test_dropout_module_is_off_in_evaluation():
    module = Dropout(0.5)
    x = torch.randn(10, 10)
    assert module.eval()(x) is x
    torch.manual_seed(0)
    assert bool((module.train()(x) == 0).any())


def _plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, p: float) -> torch.Tensor:
    """The textbook computation, differentiated by autograd, with the same dropout draw."""
    probs = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + bias, dim=-1)
    return (probs * layers.dropout_keep(probs, p).to(q.dtype) / (1 - p)) @ v


@pytest.mark.parametrize(
    ("queries", "keys", "bool_mask"),
    [(9, 9, True), (20, 20, True), (7, 12, False), (18, 5, False)],
    ids=["short-rows", "long-rows", "cross-short", "cross-long-queries"],
)
def test_hand_written_attention_and_its_backward_equal_autograd(queries, keys, bool_mask):
    """the CPU training path (its own backward, both softmax paths, a bool padding mask or an additive (B, 1,
    Tq, Tk) bias as DMD's cross-modal attention passes) against autograd on the plain formula, float64."""
    gen = torch.Generator().manual_seed(queries * keys)
    q = torch.randn(3, 4, queries, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(3, 4, keys, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    keep = torch.ones(3, 1, 1, keys, dtype=torch.bool)
    keep[0, ..., keys - 3 :] = False  # a padded clip
    bias = torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    if not bool_mask:
        bias = torch.randn(3, 1, queries, keys, generator=gen, dtype=torch.float64).masked_fill(~keep, -1e9)
    upstream = torch.randn(3, 4, queries, 4, generator=gen, dtype=torch.float64)
    torch.manual_seed(7)
    ref = _plain_attention(q, k, v, bias, 0.3)
    ref_grads = torch.autograd.grad(ref, (q, k, v), upstream)
    torch.manual_seed(7)
    ours = layers.attention(q, k, v, mask=keep if bool_mask else bias, dropout=0.3)
    our_grads = torch.autograd.grad(ours, (q, k, v), upstream)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert bool((ours != 0).any())


def _decoder_pair(seed: int = 5, dropout: float = 0.1) -> tuple[nn.TransformerDecoder, DecoderStack]:
    """torch's pre-norm decoder and the project's, each built right after ``manual_seed(seed)``."""
    torch.manual_seed(seed)
    ref_layer = nn.TransformerDecoderLayer(
        D, HEADS, dim_feedforward=4 * D, dropout=dropout, batch_first=True, norm_first=True
    )
    ref = nn.TransformerDecoder(ref_layer, 2, norm=nn.LayerNorm(D))
    torch.manual_seed(seed)
    ours = DecoderStack(DecoderLayer(D, HEADS, dim_feedforward=4 * D, dropout=dropout), 2, d_model=D)
    return ref, ours


def _decoder_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (6, 7), memory (6, 9), a causal self-attention mask and a memory padding mask."""
    gen = torch.Generator().manual_seed(0)
    x, memory = torch.randn(6, 7, D, generator=gen), torch.randn(6, 9, D, generator=gen)
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1).expand(6, -1, -1).clone()  # (B, T, T) future frames
    blocked[:2, :, 5:] = True
    blocked[:2, 5:, 5:] = torch.eye(2, dtype=torch.bool).logical_not()  # padded queries still see themselves
    memory_padding = torch.zeros(6, 9, dtype=torch.bool)
    memory_padding[:3, 6:] = True
    return x, memory, blocked, memory_padding


def test_decoder_has_torchs_parameters_and_function_in_evaluation():
    ref, ours = _decoder_pair()
    _same_state(ref, ours)
    ref.eval(), ours.eval()
    x, memory, blocked, memory_padding = _decoder_inputs()
    expected = ref(x, memory, tgt_mask=blocked.repeat_interleave(HEADS, dim=0), memory_key_padding_mask=memory_padding)
    got = ours(x, memory, blocked=blocked, memory_padding=memory_padding)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x, memory), ref(x, memory), rtol=1e-5, atol=1e-6)


def test_decoder_training_step_equals_torchs_with_torchs_dropout_stream(monkeypatch):
    monkeypatch.setattr(layers, "dropout_keep", lambda x, p: torch.empty_like(x).bernoulli_(1 - p).bool())
    ref, ours = _decoder_pair()
    ref.train(), ours.train()
    x, memory, blocked, memory_padding = _decoder_inputs()
    memory_ref, memory_ours = memory.clone().requires_grad_(), memory.clone().requires_grad_()
    torch.manual_seed(3)
    y_ref = ref(x, memory_ref, tgt_mask=blocked.repeat_interleave(HEADS, dim=0), memory_key_padding_mask=memory_padding)
    torch.manual_seed(3)
    y_ours = ours(x, memory_ours, blocked=blocked, memory_padding=memory_padding)
    _same_output_and_gradients(ref, ours, y_ref, y_ours)
    torch.testing.assert_close(memory_ours.grad, memory_ref.grad, rtol=1e-4, atol=1e-5)
