"""Small reference architectures with the naming schemes real models use.

Tiny by default (they run in tests on a CPU in milliseconds) but structured like the
models curricula are written for, so layer names, normalisation layers, buffers and
tied weights behave as they do at full size:

* ``ResNetSmall``: torchvision's ResNet naming (``conv1``, ``bn1``,
  ``layer1..layer4`` of ``BasicBlock`` s with BatchNorm and ``downsample``, ``fc``).
* ``TinyTransformer``: ``nn.TransformerEncoder`` naming (``embed``, ``pos``,
  ``encoder.layers.N.{self_attn,linear1,linear2,norm1,norm2}``, ``encoder.norm``, ``head``).
* ``BertStyle``: Hugging Face BERT naming (``embeddings``, ``encoder.layer.N``
  with ``attention.self / attention.output / intermediate / output``, ``pooler``,
  ``classifier``), optionally with a masked-LM head whose decoder is tied to the word
  embeddings (``lm_head.decoder.weight`` is ``embeddings.word_embeddings.weight``).

torchvision and transformers are not dependencies: these are written here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BasicBlock", "BertStyle", "ResNetSmall", "TinyTransformer"]


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convs with BatchNorm and a residual."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class ResNetSmall(nn.Module):
    """A ResNet with torchvision's parameter names, tiny by default.

    Args:
      num_classes: outputs of the ``fc`` head.
      widths: channels of ``layer1..layer4``.
      blocks: ``BasicBlock`` s per stage.
      in_channels: input channels.

    Example:
      >>> import torch, funcurriculum as fc
      >>> m = fc.models.ResNetSmall()
      >>> m(torch.randn(2, 3, 16, 16)).shape
      torch.Size([2, 10])
      >>> fc.Curriculum.from_module(m).layer_names[:4]
      ['conv1', 'bn1', 'layer1', 'layer1.0']
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int, int] = (4, 8, 8, 16),
        blocks: tuple[int, int, int, int] = (1, 1, 1, 1),
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        for k, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if k == 0 else 2
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, w, stride if j == 0 else 1))
                cin = w
            setattr(self, f"layer{k + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyTransformer(nn.Module):
    """A token classifier on ``nn.TransformerEncoder`` (its naming), tiny by default.

    Args:
      vocab_size: token vocabulary.
      d_model: width.
      nhead: attention heads.
      num_layers: encoder layers (``encoder.layers.N``).
      dim_feedforward: MLP width.
      num_classes: outputs of ``head``.
      max_len: longest sequence (learned positions ``pos``).

    Example:
      >>> import torch, funcurriculum as fc
      >>> m = fc.models.TinyTransformer()
      >>> m(torch.randint(0, 50, (2, 7))).shape
      torch.Size([2, 3])
    """

    def __init__(
        self,
        vocab_size: int = 50,
        d_model: int = 16,
        nhead: int = 2,
        num_layers: int = 2,
        dim_feedforward: int = 32,
        num_classes: int = 3,
        max_len: int = 16,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[-1]]
        return self.head(self.encoder(x).mean(dim=-2))


# -- BERT-style (Hugging Face naming) ----------------------------------------------------
class _Embeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_len: int, type_vocab: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_len, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.register_buffer("position_ids", torch.arange(max_len), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[: ids.shape[-1]]
        x = self.word_embeddings(ids) + self.position_embeddings(pos)
        x = x + self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *b, t, h = x.shape
        d = h // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(*b, t, self.heads, d).transpose(-2, -3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return (att @ v).transpose(-2, -3).reshape(*b, t, h)


class _Output(nn.Module):
    """``dense`` + residual + ``LayerNorm`` (BERT's SelfOutput / Output)."""

    def __init__(self, cin: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(cin, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _Output(hidden, hidden, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _Output(inner, hidden, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, n: int, hidden: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(hidden, heads, inner, eps) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return x


class _Pooler(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[..., 0, :]))


class _LMHead(nn.Module):
    def __init__(self, hidden: int, vocab_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(nn.functional.gelu(self.dense(x))))


class BertStyle(nn.Module):
    """A BERT with Hugging Face's parameter names, tiny by default.

    ``head="classifier"`` (``BertForSequenceClassification``): ``pooler`` and
    ``classifier``; the forward pass returns ``(batch, num_labels)`` logits.
    ``head="lm"`` (``BertForMaskedLM``): ``lm_head`` whose ``decoder.weight`` *is*
    ``embeddings.word_embeddings.weight`` (tied); returns ``(batch, seq, vocab)``.

    Args:
      vocab_size: token vocabulary.
      hidden: width.
      num_layers: ``encoder.layer.N`` blocks.
      heads: attention heads.
      intermediate: MLP width.
      max_len: longest sequence.
      num_labels: classifier outputs.
      head: ``"classifier"`` or ``"lm"``.

    Example:
      >>> import torch, funcurriculum as fc
      >>> m = fc.models.BertStyle(head="lm")
      >>> m(torch.randint(0, 50, (2, 5))).shape
      torch.Size([2, 5, 50])
      >>> fc.Curriculum.from_module(m).tied
      {'embeddings.word_embeddings.weight': ('lm_head.decoder.weight',)}
    """

    def __init__(
        self,
        vocab_size: int = 50,
        hidden: int = 16,
        num_layers: int = 2,
        heads: int = 2,
        intermediate: int = 32,
        max_len: int = 16,
        num_labels: int = 3,
        head: str = "classifier",
        type_vocab: int = 2,
        eps: float = 1e-12,
    ):
        super().__init__()
        if head not in ("classifier", "lm"):
            raise ValueError(f"head must be 'classifier' or 'lm', got {head!r}")
        self.head = head
        self.embeddings = _Embeddings(vocab_size, hidden, max_len, type_vocab, eps)
        self.encoder = _Encoder(num_layers, hidden, heads, intermediate, eps)
        if head == "classifier":
            self.pooler = _Pooler(hidden)
            self.classifier = nn.Linear(hidden, num_labels)
        else:
            self.lm_head = _LMHead(hidden, vocab_size, eps)
            self.lm_head.decoder.weight = self.embeddings.word_embeddings.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embeddings(ids))
        if self.head == "classifier":
            return self.classifier(self.pooler(x))
        return self.lm_head(x)
