"""``gcnet`` — GCNet: Graph Completion Network for incomplete multimodal learning in conversation.

Paper: Zheng Lian, Lan Chen, Licai Sun, Bin Liu, Jianhua Tao. *GCNet: Graph Completion Network for Incomplete
Multimodal Learning in Conversation.* IEEE TPAMI 45(7), 2023: 8419-8432, arXiv 2203.02177 (code:
zeroQiaoba/GCNet). Specification: ``field_conventions.md`` §7.7.

What is implemented (paper concept -> code):
    * Utterance-level input: per utterance the acoustic, lexical and visual vectors, missing views zeroed,
      concatenated (ours: language, audio, vision order) ............................  utterance_features
    * Sequential context encoder: 2-layer BiLSTM over the utterances of a conversation (hidden D_e per
      direction) ...........................................................................  GCNet.context
    * Temporal GNN: graph over the utterances of a conversation, edges inside a past/future window, relations
      past / now / future; relation-aware graph convolution (RGCN, mean aggregation per relation, root weight)
      then a graph convolution (GraphConv, sum aggregation); the input is concatenated to the graph output,
      then a 2-layer BiLSTM over the conversation, optional matching attention (``time_attention``) and a
      Linear + ReLU ......................................................................  GraphNetwork
    * Speaker GNN: the same network on the speaker graph (same edges, relations = ordered speaker pairs; one
      speaker per conversation here, so a single relation) .....................................  GraphNetwork
    * The two GNN outputs are summed; a linear task head and a linear reconstruction head (to the full
      concatenated utterance vector) read the sum ...............................................  GCNet
    * Loss: task + reconstruction MSE counted only on the missing views (each view's squared error averaged
      over its dimensions, summed over views, averaged over utterances) ..............  GCNetObjective
    * Training missingness: CPM-Nets-style per-utterance view masks at rate ``missing_rate``, at least one view
      kept, re-drawn every batch ................................................................  CPMViewMissing

Deviations forced by our setting, and choices:
    * Conversations. A GCNet batch holds whole videos: its ModelSpec sets ``batches_by_video``, and the trainer and
      the evaluator then pack whole videos (the clips sharing the id part before the last ``$_$``) into each
      batch (``DataModule.batches(by_video=True)``; training shuffles videos, not clips). The graph and the
      conversation BiLSTMs are built over the clips of a video, ordered by the clip number after ``$_$``
      (numeric when it parses, else lexical), exactly as over a conversation; predictions therefore do not
      depend on the batch size or order. For MOSI/MOSEI one video is one speaker (the authors treat them the
      same way); for IEMOCAP our files carry no speaker turns, so the speaker graph also has one relation. A
      clip without ``$_$`` in its id is its own video.
    * Self-loops in every relation (not only "now"): each relation's mean aggregation includes the clip itself,
      so a clip with no neighbour of a relation falls back to itself instead of an empty sum, and every
      relation weight is trained even on singleton conversations.
    * Task head reads [H; X^] where X^ = W_rec H + b is the reconstruction head's output; since X^ is affine in
      H this is a reparametrization of the paper's linear head on H (same function class), and it lets the
      reconstruction head also receive task gradients when no view is missing; off by default (the paper's
      head), in which case the model declares its reconstruction head as getting no gradient on complete data.
    * The BiLSTMs start from learned initial states (parameters, h0 ~ N(0, 0.1^2) with 0.1 =
      ``initial_state_scale``, c0 = 0) instead of zeros: with one-clip conversations (frequent in random batches,
      and every clip of the contract tests) a zero start would leave the recurrent weights without any gradient.
    * Utterance vectors are the masked means of each modality's present frames of the GloVe / COVAREP / Facet
      sequences (the paper uses utterance-level wav2vec / DeBERTa / MA-Net features); a view is missing when none
      of its frames is present; frame-level gaps only change the mean.
    * Hidden sizes from the authors' code: D_e = ``d_model`` = 100 (``--hidden``), graph hidden D_e / 2, BiLSTM
      dropout 0.5, windows 2 / 2 (README command). Task loss of the harness (MSE for MOSI/MOSEI as in GCNet;
      per-emotion CE for IEMOCAP instead of GCNet's 4-way CE).
    * CPM masks are drawn per utterance with the expected rate exact (one uniformly chosen view kept, each other
      view kept with the probability that makes the mean kept fraction 1 - rate) instead of CPM's rejection loop
      that matches the rate within 0.5 % per batch; rates >= 2/3 keep exactly one view, as in CPM.

Sections: config (:class:`GCNetCfg`) - training protocol (:class:`CPMViewMissing`) - the graphs
(:class:`Conversations`) - network (:class:`GCNet`, exactly what ``model.safetensors`` holds) - training system
(:class:`GCNetObjective`) - registration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hrlf.data.features import ID_SEPARATOR
from hrlf.engine.system import TrainingSystem, task_loss
from hrlf.missing.protocol import apply_missing
from hrlf.models.layers import check_counts, check_dropouts, shape_prediction, task_outputs
from hrlf.registry import ModelSpec, register_model
from hrlf.types import MODALITIES, Batch, Modality, ModelOutput, TaskSpec

#: temporal relations, indexed by the sign of (source position - target position) + 1
TEMPORAL_RELATIONS: tuple[str, ...] = ("past", "now", "future")


# ----------------------------------------------------------------------------------------------------- config


@dataclass
class GCNetCfg:
    d_model: int = 100  # D_e, hidden size per direction of the context BiLSTM (authors' --hidden default 100)
    graph_hidden: int = 0  # output size of the graph convolutions; 0 = d_model // 2 (authors' code)
    num_layers: int = 2  # layers of every BiLSTM (authors' code: 2)
    dropout: float = 0.5  # dropout between BiLSTM layers (authors' --dropout)
    window_past: int = 2  # earlier clips of the same video a clip is connected to; -1 = all (README: 2)
    window_future: int = 2  # later clips of the same video a clip is connected to; -1 = all (README: 2)
    time_attention: bool = False  # matching attention over the conversation after the GNN BiLSTM (--time-attn)
    head_reads_reconstruction: bool = False  # task head on [H; X^] (affine reparametrization) instead of H
    lambda_recon: float = 1.0  # weight of the reconstruction loss (--loss-recon: weight 1)
    missing_rate: float = 0.5  # CPM training masks: expected fraction of missing views (HRLF inter-test mean)
    initial_state_scale: float = 0.1  # std of the learned BiLSTM initial hidden states h0 ~ N(0, scale^2)

    def __post_init__(self) -> None:
        """Messages read ``<field>: expected ..., found ...`` (the config loader prefixes ``model.``)."""
        check_counts(num_layers=self.num_layers)
        check_dropouts(dropout=self.dropout)
        for name in ("window_past", "window_future"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name}: expected an integer >= -1 (-1 = all), found {getattr(self, name)!r}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise ValueError(f"missing_rate: expected a rate in [0, 1), found {self.missing_rate!r}")


# ------------------------------------------------------------------------------------------------ protocol


def cpm_keep_probability(rate: float, views: int) -> float:
    """Probability that a view other than the guaranteed one is kept, so that E[kept fraction] = 1 - rate."""
    if views < 2:
        return 1.0
    return min(1.0, max(0.0, (views * (1.0 - rate) - 1.0) / (views - 1)))


@dataclass(frozen=True)
class CPMViewMissing:
    """GCNet's training masks (CPM-Nets style): per utterance, views removed at ``rate``, at least one kept.

    Every sample keeps one uniformly chosen view; each of its other views is kept independently with probability
    :func:`cpm_keep_probability`, so the expected fraction of missing views is ``rate`` (saturating at
    1 - 1/V = 2/3, where exactly one view is kept). Whole views are removed (zero vectors). Fresh masks on every
    call, drawn from ``generator`` only; the input batch is not modified.

    Attributes:
        rate: expected fraction of missing views per utterance, in [0, 1).
    """

    rate: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"rate must lie in [0, 1), got {self.rate}")

    @property
    def name(self) -> str:
        return f"cpm_view_drop(rate={self.rate!r})"

    def describe(self) -> dict[str, Any]:
        """JSON-able name and parameters, for results files."""
        return {"name": self.name, "type": "cpm_view_drop", "params": {"rate": self.rate}}

    def kept(self, batch_size: int, views: int, *, generator: torch.Generator) -> Tensor:
        """(B, V) bool availability on the generator's device; every row has at least one True."""
        device = generator.device
        guaranteed = torch.randint(views, (batch_size,), generator=generator, device=device)  # (B,)
        extra = torch.rand(batch_size, views, generator=generator, device=device) < cpm_keep_probability(
            self.rate, views
        )  # (B, V)
        return F.one_hot(guaranteed, views).bool() | extra  # (B, V)

    def apply(self, batch: Batch, *, generator: torch.Generator) -> Batch:
        """Removes views of ``batch`` at ``rate``.

        Args:
            batch: the training batch.
            generator: the only source of randomness.

        Returns:
            A new batch with the removed views fully missing (padding included) and zeroed.
        """
        views = [m for m in MODALITIES if m in batch.features]
        kept = self.kept(batch.size, len(views), generator=generator)  # (B, V)
        new: dict[Modality, Tensor] = {}
        for j, m in enumerate(views):
            absent = ~kept[:, j].to(batch.valid[m].device)  # (B,)
            new[m] = absent[:, None].expand_as(batch.valid[m]).clone()  # (B, T): the whole row
        return apply_missing(batch, new)


def train_protocol(cfg: GCNetCfg) -> CPMViewMissing:
    return CPMViewMissing(rate=cfg.missing_rate)


# ---------------------------------------------------------------------------------------------- the graphs


def utterance_features(batch: Batch) -> tuple[dict[Modality, Tensor], dict[Modality, Tensor]]:
    """Utterance-level vectors: per modality the mean of its present frames (zero when none is present).

    Returns:
        Per modality the (B, D_m) vectors and the (B,) bool view-present flags.
    """
    vectors: dict[Modality, Tensor] = {}
    present_views: dict[Modality, Tensor] = {}
    for m in MODALITIES:
        present = batch.present(m)  # (B, T)
        weights = present.to(batch.features[m].dtype).unsqueeze(-1)  # (B, T, 1)
        total = (batch.features[m] * weights).sum(dim=1)  # (B, T, D) -> (B, D)
        vectors[m] = total / weights.sum(dim=1).clamp(min=1.0)  # (B, D)
        present_views[m] = present.any(dim=1)  # (B,)
    return vectors, present_views


def _clip_key(clip: str) -> tuple[int, int, str]:
    return (0, int(clip), "") if clip.lstrip("-").isdigit() else (1, 0, clip)


@dataclass(frozen=True)
class Conversations:
    """The batch's clips grouped into conversations (videos) and ordered inside each.

    Attributes:
        group: (B,) conversation index of each clip (0..G-1, in order of first appearance).
        position: (B,) position of each clip inside its conversation (0..n_g-1).
        lengths: (G,) number of clips per conversation.
    """

    group: Tensor
    position: Tensor
    lengths: Tensor

    @classmethod
    def from_ids(cls, ids: list[str], *, size: int, device: torch.device) -> Conversations:
        """Group by the video part of each id (before the last ``$_$``), order by the clip part after it.

        A batch without ids makes every clip its own conversation.
        """
        if not ids:
            ids = [f"row{i}" for i in range(size)]
        if len(ids) != size:
            raise ValueError(f"batch has {len(ids)} ids for {size} samples")
        videos: dict[str, int] = {}
        members: dict[int, list[tuple[tuple[int, int, str], int]]] = {}
        group = []
        for row, sample_id in enumerate(ids):
            video, sep, clip = sample_id.rpartition(ID_SEPARATOR)
            if not sep:
                video, clip = sample_id, ""
            g = videos.setdefault(video, len(videos))
            group.append(g)
            members.setdefault(g, []).append((_clip_key(clip), row))
        position = [0] * size
        for rows in members.values():
            for rank, (_, row) in enumerate(sorted(rows)):
                position[row] = rank
        lengths = [len(members[g]) for g in range(len(videos))]

        def as_long(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(as_long(group), as_long(position), as_long(lengths))

    def temporal_adjacency(self, *, window_past: int, window_future: int) -> Tensor:
        """(3, B, B) float: ``A[r, i, j] = 1`` when clip j sends to clip i with relation r (past / now / future).

        Clips of one video are connected when j lies at most ``window_past`` positions before i or at most
        ``window_future`` after it (-1 = unbounded); the relation is the sign of pos_j - pos_i. Every clip also
        has a self-loop in every relation.
        """
        same = self.group[:, None] == self.group[None, :]  # (B, B)
        offset = self.position[None, :] - self.position[:, None]  # (B, B): pos_j - pos_i
        inside = same.clone()
        if window_past >= 0:
            inside &= offset >= -window_past
        if window_future >= 0:
            inside &= offset <= window_future
        relation = torch.sign(offset) + 1  # (B, B) in {0, 1, 2}
        adjacency = torch.stack([inside & (relation == r) for r in range(len(TEMPORAL_RELATIONS))])  # (3, B, B)
        eye = torch.eye(self.group.shape[0], dtype=torch.bool, device=self.group.device)  # (B, B)
        return (adjacency | eye).float()

    def pad(self, x: Tensor) -> Tensor:
        """(B, D) clip rows -> (G, L, D) conversations, zero after each conversation's end."""
        out = x.new_zeros(self.lengths.shape[0], int(self.lengths.max()), x.shape[-1])  # (G, L, D)
        out[self.group, self.position] = x
        return out

    def unpad(self, x: Tensor) -> Tensor:
        """(G, L, D) conversations -> (B, D) clip rows."""
        return x[self.group, self.position]  # (B, D)

    def key_mask(self) -> Tensor:
        """(G, L) bool, True = a real clip."""
        steps = torch.arange(int(self.lengths.max()), device=self.lengths.device)  # (L,)
        return steps[None, :] < self.lengths[:, None]  # (G, L)


# ---------------------------------------------------------------------------------------------------- network


@dataclass
class GCNetOutput(ModelOutput):
    """GCNet's output: the task prediction, the GNN state and the reconstruction head's output per view.

    Attributes:
        hidden: (B, h) sum of the temporal and speaker GNN outputs, read by both heads.
        recon: per modality the reconstructed utterance vector X^_m (B, D_m).
        views: per modality (B,) 1.0 where the view is in the network's input, 0.0 where it is missing.
    """

    hidden: Tensor | None = None
    recon: dict[Modality, Tensor] = field(default_factory=dict)
    views: dict[Modality, Tensor] = field(default_factory=dict)


class ConversationLSTM(nn.Module):
    """A BiLSTM over each conversation's clips (packed: padding never reaches a real clip).

    The initial hidden and cell states are learned (one per layer and direction, shared by all conversations).
    """

    def __init__(
        self, *, input_size: int, hidden_size: int, num_layers: int, dropout: float, initial_state_scale: float = 0.1
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        # small random start: with a zero state the recurrent weights of a one-clip conversation get no gradient
        self.h0 = nn.Parameter(initial_state_scale * torch.randn(2 * num_layers, 1, hidden_size))
        self.c0 = nn.Parameter(torch.zeros(2 * num_layers, 1, hidden_size))

    def forward(self, x: Tensor, conversations: Conversations) -> Tensor:
        """(B, D) clip rows -> (B, 2 hidden) contextual rows."""
        padded = conversations.pad(x)  # (B, D) -> (G, L, D)
        lengths = conversations.lengths.cpu()
        packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        groups = padded.shape[0]
        state = (self.h0.expand(-1, groups, -1).contiguous(), self.c0.expand(-1, groups, -1).contiguous())
        out, _ = self.lstm(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])  # (G, L, 2h)
        return conversations.unpad(out)  # (G, L, 2h) -> (B, 2h)


class RelationalGraphConv(nn.Module):
    """RGCN layer (Schlichtkrull et al.): x'_i = W_0 x_i + sum_r mean_{j in N_r(i)} W_r x_j + b."""

    def __init__(self, *, in_dim: int, out_dim: int, num_relations: int) -> None:
        super().__init__()
        self.root = nn.Linear(in_dim, out_dim)
        self.weight = nn.Parameter(torch.empty(num_relations, in_dim, out_dim))
        nn.init.xavier_uniform_(self.weight.view(-1, out_dim))

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """x (N, in), adjacency (R, N, N) -> (N, out)."""
        norm = adjacency / adjacency.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (R, N, N): mean per relation
        messages = torch.einsum("rij,jd,rde->ie", norm, x, self.weight)  # (N, out)
        return self.root(x) + messages


class GraphConv(nn.Module):
    """GraphConv layer (Morris et al.): x'_i = W_1 x_i + W_2 sum_{j in N(i)} x_j (+ bias)."""

    def __init__(self, *, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.root = nn.Linear(in_dim, out_dim, bias=False)
        self.neighbours = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """x (N, in), adjacency (N, N) 0/1 -> (N, out)."""
        return self.root(x) + self.neighbours(adjacency @ x)  # (N, N) @ (N, in) -> (N, in) -> (N, out)


class MatchingAttention(nn.Module):
    """Nodal attention over a conversation (GCNet Eqs. 4-6, the code's ``general2``): softmax(tanh(x W M^T))."""

    def __init__(self, *, width: int) -> None:
        super().__init__()
        self.transform = nn.Linear(width, width)

    def forward(self, x: Tensor, conversations: Conversations) -> Tensor:
        """(B, w) clip rows -> (B, w) attention-pooled rows over each clip's conversation."""
        memory = conversations.pad(x)  # (G, L, w)
        keys = conversations.key_mask()  # (G, L)
        scores = torch.tanh(self.transform(memory) @ memory.transpose(1, 2))  # (G, L, L)
        scores = scores.masked_fill(~keys[:, None, :], float("-inf"))
        pooled = torch.softmax(scores, dim=-1) @ memory  # (G, L, L) @ (G, L, w) -> (G, L, w)
        return conversations.unpad(pooled)  # (B, w)


class GraphNetwork(nn.Module):
    """One GNN branch: RGCN -> GraphConv, [input; graph] -> BiLSTM -> (attention) -> Linear + ReLU."""

    def __init__(
        self,
        *,
        in_dim: int,
        graph_hidden: int,
        num_relations: int,
        num_layers: int,
        dropout: float,
        time_attention: bool,
        initial_state_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv1 = RelationalGraphConv(in_dim=in_dim, out_dim=graph_hidden, num_relations=num_relations)
        self.conv2 = GraphConv(in_dim=graph_hidden, out_dim=graph_hidden)
        width = in_dim + graph_hidden
        self.sequence = ConversationLSTM(
            input_size=width,
            hidden_size=width,
            num_layers=num_layers,
            dropout=dropout,
            initial_state_scale=initial_state_scale,
        )
        self.attention = MatchingAttention(width=2 * width) if time_attention else None
        self.out = nn.Linear(2 * width, width)

    def forward(self, x: Tensor, adjacency: Tensor, conversations: Conversations) -> Tensor:
        """x (B, in), adjacency (R, B, B) -> (B, in + graph_hidden)."""
        graph = self.conv1(x, adjacency)  # (B, g)
        graph = self.conv2(graph, (adjacency.sum(dim=0) > 0).to(x.dtype))  # (B, g)
        h = self.sequence(torch.cat([x, graph], dim=-1), conversations)  # (B, in + g) -> (B, 2w)
        if self.attention is not None:
            h = self.attention(h, conversations)  # (B, 2w)
        return torch.relu(self.out(h))  # (B, w)


class GCNet(nn.Module):
    """Utterance vectors -> context BiLSTM -> temporal GNN + speaker GNN -> task and reconstruction heads."""

    @property
    def no_gradient_when_complete(self) -> tuple[str, ...]:
        """Parameters that get no gradient when no view is missing: the reconstruction loss counts only missing
        parts, and with the paper's head the reconstruction head feeds nothing else."""
        return () if self.head_reads_reconstruction else ("reconstruction.",)

    def __init__(self, cfg: GCNetCfg, *, dims: Mapping[Modality, int], task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.dims = {m: int(dims[m]) for m in MODALITIES}
        self.window_past = cfg.window_past
        self.window_future = cfg.window_future
        self.head_reads_reconstruction = cfg.head_reads_reconstruction
        d_model = cfg.d_model
        graph_hidden = cfg.graph_hidden or max(1, d_model // 2)
        input_dim = sum(self.dims.values())
        self.context = ConversationLSTM(
            input_size=input_dim,
            hidden_size=d_model,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
            initial_state_scale=cfg.initial_state_scale,
        )

        def branch(num_relations: int) -> GraphNetwork:
            return GraphNetwork(
                in_dim=2 * d_model,
                graph_hidden=graph_hidden,
                num_relations=num_relations,
                num_layers=cfg.num_layers,
                dropout=cfg.dropout,
                time_attention=cfg.time_attention,
                initial_state_scale=cfg.initial_state_scale,
            )

        self.temporal = branch(len(TEMPORAL_RELATIONS))
        self.speaker = branch(1)  # one speaker per video: one ordered pair
        hidden = 2 * d_model + graph_hidden
        self.reconstruction = nn.Linear(hidden, input_dim)
        head_in = hidden + input_dim if cfg.head_reads_reconstruction else hidden
        self.head = nn.Linear(head_in, task_outputs(task.kind, task.num_targets))

    def forward(self, batch: Batch) -> GCNetOutput:
        vectors, present_views = utterance_features(batch)
        x = torch.cat([vectors[m] for m in MODALITIES], dim=-1)  # (B, D_l + D_a + D_v), missing views zero
        conversations = Conversations.from_ids(batch.ids, size=batch.size, device=x.device)
        temporal = conversations.temporal_adjacency(
            window_past=self.window_past, window_future=self.window_future
        )  # (3, B, B)
        speaker = (temporal.sum(dim=0, keepdim=True) > 0).to(x.dtype)  # (1, B, B): same edges, one relation
        context = self.context(x, conversations)  # (B, 2 D_e)
        hidden = self.temporal(context, temporal, conversations) + self.speaker(context, speaker, conversations)
        recon = self.reconstruction(hidden)  # (B, D_in)
        head_in = torch.cat([hidden, recon], dim=-1) if self.head_reads_reconstruction else hidden
        pred = shape_prediction(self.head(head_in), self.task.kind, self.task.num_targets)
        parts = recon.split([self.dims[m] for m in MODALITIES], dim=-1)  # (B, D_in) -> (B, D_m) per modality
        return GCNetOutput(
            pred=pred,
            hidden=hidden,
            recon=dict(zip(MODALITIES, parts, strict=True)),
            views={m: present_views[m].to(x.dtype) for m in MODALITIES},
        )


# -------------------------------------------------------------------------------------------- training system


def missing_view_reconstruction(output: GCNetOutput, batch: Batch, clean: Batch) -> Tensor:
    """L_recon: the reconstruction error of the views missing in ``batch`` but present in ``clean``.

    ``L = L_task + lambda_recon * L_recon`` with, for B utterances and views m of size D_m,

        L_recon = (1 / B) * sum_b sum_m missing[b, m] * (1 / D_m) * ||X^_{b,m} - X_{b,m}||^2,

    the authors' ``MaskedReconLoss``: X is the complete utterance vector (from the clean batch), X^ the reconstruction
    head's output, and a view counts only where the training masks removed it (present in the clean batch, absent in
    the corrupted one). Views that are present, and views absent from the clean data too, add nothing.
    """
    targets, clean_views = utterance_features(clean)
    total = output.pred.new_zeros(())
    for m in MODALITIES:
        removed = clean_views[m] & ~(output.views[m] > 0)  # (B,)
        error = (output.recon[m] - targets[m]).pow(2).mean(dim=-1)  # (B, D_m) -> (B,)
        total = total + (error * removed.to(error.dtype)).sum()
    return total / max(batch.size, 1)


class GCNetObjective(TrainingSystem):
    """``{"task", "recon", "loss"}``: task loss + ``lambda_recon`` x reconstruction of the views the training
    protocol removed (against ``clean``; zero without it, as the missing views' targets are unknown)."""

    network_type = GCNet

    def __init__(self, cfg: GCNetCfg, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.lambda_recon = cfg.lambda_recon

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del teacher  # unused here; part of the losses() signature every system shares
        assert isinstance(output, GCNetOutput)
        terms = {"task": task_loss(output.pred, batch.label, self.task)}
        terms["recon"] = (
            missing_view_reconstruction(output, batch, clean) if clean is not None else output.pred.new_zeros(())
        )
        terms["loss"] = terms["task"] + self.lambda_recon * terms["recon"]
        return terms


# ----------------------------------------------------------------------------------------------- registration

register_model(
    ModelSpec(
        name="gcnet",
        config_cls=GCNetCfg,
        build=GCNet,
        objective=GCNetObjective,
        train_protocol=train_protocol,
        batches_by_video=True,  # the trainer and evaluator put whole videos (conversations) in every batch
    )
)
