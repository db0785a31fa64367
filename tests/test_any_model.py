"""spruce.prune on models it did not write: transformers models built from small configs
and a hand-written module with Conv1d, MultiheadAttention, a reused Linear and tied weights.

For every model × pattern: every module holding weights is pruned or reported; every user of
a shared weight reads one masked tensor; ``bake`` and save → load give the pruned outputs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import spruce
from spruce.masks import mask_module, masked_layers, original_weight
from spruce.view import held_weights

transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", module="transformers")


class HandMade(nn.Module):
    """Conv1d, Conv3d, a depthwise conv, MultiheadAttention, one Linear under two names,
    two Linears sharing one weight, and an embedding tied to the output head."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.dw = nn.Conv1d(dim, dim, 3, padding=1, groups=dim)
        self.vol = nn.Conv3d(1, 4, 2)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.fc = nn.Linear(dim, dim)
        self.fc_again = self.fc  # one module, two names
        self.up = nn.Linear(dim, dim)
        self.up_twin = nn.Linear(dim, dim)
        self.up_twin.weight = self.up.weight  # two modules, one weight
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied to the embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)                                   # (B, T, D)
        h = h + self.dw(self.conv(h.transpose(1, 2))).transpose(1, 2)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = self.fc_again(torch.relu(self.fc(h)))
        h = self.up(h) + self.up_twin(h)
        vol = self.vol(h[:, None, :, :4, None].expand(-1, -1, -1, -1, 2)).mean()
        return self.head(h) + vol


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], dict]


def _ids(vocab: int = 100, t: int = 8) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, vocab, (2, t), generator=gen)}


def _gpt2(lm_head: bool) -> nn.Module:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                  n_positions=16, bos_token_id=0, eos_token_id=0)
    return (transformers.GPT2LMHeadModel if lm_head else transformers.GPT2Model)(cfg)


def _llama(tied: bool) -> nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                   max_position_embeddings=16, tie_word_embeddings=tied,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def _vit() -> nn.Module:
    return transformers.ViTModel(transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64))


def _bert() -> nn.Module:
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16))


def _distilbert() -> nn.Module:
    return transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=100, dim=32, hidden_dim=64, n_layers=2, n_heads=2,
        max_position_embeddings=16))


def _t5_config():
    return transformers.T5Config(vocab_size=100, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                 num_layers=2, decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=1)


def _whisper() -> nn.Module:
    return transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        vocab_size=100, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=16, max_target_positions=16,
        decoder_start_token_id=0, pad_token_id=0, bos_token_id=0, eos_token_id=0))


def _seq2seq_inputs() -> dict:
    return {**_ids(), "decoder_input_ids": _ids(t=5)["input_ids"]}


CASES = [
    Case("gpt2", lambda: _gpt2(False), _ids),
    Case("gpt2-lm-tied", lambda: _gpt2(True), _ids),
    Case("llama-gqa-tied", lambda: _llama(True), _ids),
    Case("llama-gqa", lambda: _llama(False), _ids),
    Case("vit", _vit, lambda: {"pixel_values": torch.randn(2, 3, 16, 16)}),
    Case("bert", _bert, lambda: _ids(1000)),
    Case("distilbert", _distilbert, _ids),
    Case("t5-encoder", lambda: transformers.T5EncoderModel(_t5_config()), _ids),
    Case("t5", lambda: transformers.T5ForConditionalGeneration(_t5_config()), _seq2seq_inputs),
    Case("whisper", _whisper, lambda: {"input_features": torch.randn(2, 8, 32),
                                       "decoder_input_ids": _ids(t=5)["input_ids"]}),
    Case("handmade", HandMade, lambda: {"ids": _ids(50)["input_ids"]}),
]
PATTERNS = [("element", 0.5, {}), ("2:4", None, {}), ("block", 0.5, {"block": (4, 4)}),
            ("group", 0.5, {}), ("channel", 0.5, {})]


_BUILT: dict[str, nn.Module] = {}


def _build(case: Case) -> nn.Module:
    """A fresh copy of the case's model (built once: deep copies keep tied weights tied)."""
    if case.name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[case.name] = case.build().eval()
    return copy.deepcopy(_BUILT[case.name])


def _out(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if "logits" in out else out.last_hidden_state


def weight_holders(model: nn.Module) -> dict[str, nn.Module]:
    """Every name of every module that holds a parameter of rank >= 2 itself (or whose
    weight is parametrized), parametrization internals left out."""
    inner = {id(x) for m in model.modules() if hasattr(m, "parametrizations")
             for x in m.parametrizations.modules()}
    return {n: m for n, m in model.named_modules(remove_duplicate=False)
            if id(m) not in inner and any(p.dim() >= 2 for p in held_weights(m).values())}


def _users_by_weight(model: nn.Module) -> dict[int, list[nn.Module]]:
    users: dict[int, list[nn.Module]] = {}
    for m in {id(m): m for m in weight_holders(model).values()}.values():
        for p in {id(p): p for p in held_weights(m).values()}.values():
            users.setdefault(id(p), []).append(m)
    return users


def check_consistent(model: nn.Module) -> None:
    """Masked weights are original × mask, and every user of a weight reads one tensor."""
    for name, layer in masked_layers(model).items():
        m = mask_module(layer).mask
        assert torch.equal(layer.weight, original_weight(layer) * m), name
    for users in _users_by_weight(model).values():
        tensors = [getattr(u, "weight", None) for u in users]
        if len(users) > 1 and all(t is not None for t in tensors):
            for t in tensors[1:]:
                assert torch.equal(t, tensors[0])


@pytest.mark.parametrize("pattern,density,kw", PATTERNS, ids=[p[0] for p in PATTERNS])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_prune_bake_save_load(case, pattern, density, kw, tmp_path):
    model, inputs = _build(case), case.inputs()
    report = spruce.prune(model, pattern, density, **kw)

    covered = {r.name for r in report.rows} | {n for r in report.rows for n in r.shared} \
        | {s.name for s in report.skipped}
    missing = sorted(set(weight_holders(model)) - covered)
    assert not missing, f"neither pruned nor reported: {missing}"
    assert not {r.name for r in report.rows} & {s.name for s in report.skipped}
    check_consistent(model)
    masked = _out(model, inputs)

    baked = spruce.bake(copy.deepcopy(model))
    assert not masked_layers(baked)
    torch.testing.assert_close(_out(baked, inputs), masked, rtol=1e-5, atol=1e-6)

    spruce.save(model, tmp_path / "m.safetensors")
    fresh = _build(case)
    spruce.load(tmp_path / "m.safetensors", fresh)
    check_consistent(fresh)
    torch.testing.assert_close(_out(fresh, inputs), masked, rtol=0, atol=0)
    assert len(_users_by_weight(fresh)) == len(_users_by_weight(model))  # sharing kept


def test_gpt2_conv1d_mask_in_weight_layout_view_transposed():
    model = _build(CASES[0])
    report = spruce.prune(model, "2:4")
    row = next(r for r in report.rows if r.name == "h.0.mlp.c_fc")
    layer = model.get_submodule("h.0.mlp.c_fc")
    assert (row.kind, row.view) == ("Conv1D", (128, 32))  # weight [in=32, out=128]
    stored = mask_module(layer).mask
    view = spruce.get_mask(layer)
    assert stored.shape == (32, 128) and view.shape == (128, 32)
    assert torch.equal(view, stored.t())
    assert (view.reshape(128, 8, 4).sum(-1) == 2).all()  # 2 of every 4 along the input dim


def test_tied_lm_head_stays_dense_with_reason():
    model = _build(CASES[1])
    report = spruce.prune(model, "element", 0.5)
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["lm_head"] == "shares its weight with embedding 'transformer.wte' (tied)"
    assert model.lm_head.weight is model.transformer.wte.weight
    spruce.bake(model)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_shared_linear_weight_has_one_mask_everywhere(tmp_path):
    model = _build(CASES[-1])
    report = spruce.prune(model, "element", 0.5)
    row = next(r for r in report.rows if r.name == "up")
    assert row.shared == ("up_twin",)
    fc = next(r for r in report.rows if r.name == "fc")
    assert fc.shared == ("fc_again",)
    assert mask_module(model.up) is mask_module(model.up_twin)
    assert original_weight(model.up) is original_weight(model.up_twin)
    spruce.save(model, tmp_path / "m.safetensors")
    fresh = spruce.load(tmp_path / "m.safetensors", HandMade().eval())
    assert mask_module(fresh.up) is mask_module(fresh.up_twin)
    assert original_weight(fresh.up) is original_weight(fresh.up_twin)
    assert fresh.fc is fresh.fc_again
    baked = spruce.bake(fresh)
    assert baked.up.weight is baked.up_twin.weight and baked.fc is baked.fc_again


def test_handmade_skip_reasons():
    report = spruce.prune(HandMade(), "group", 0.5)
    reasons = {s.name: s.reason for s in report.skipped}
    assert "groups=16" in reasons["dw"]
    assert "in_proj_weight" in reasons["attn"]
    assert "attn.out_proj" in {r.name for r in report.rows}
    assert reasons["embed"].startswith("embedding")
    assert reasons["head"] == "shares its weight with embedding 'embed' (tied)"
    kinds = {r.name: (r.kind, r.view) for r in report.rows}
    assert kinds["conv"] == ("Conv1d", (16, 48)) and kinds["vol"] == ("Conv3d", (4, 8))


def test_info_lists_new_kinds_and_skipped(tmp_path):
    from typer.testing import CliRunner

    from spruce.cli import app
    src = tmp_path / "hand.py"
    src.write_text("from tests.test_any_model import HandMade\n\n"
                   "def build():\n    return HandMade()\n")
    out = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["info", f"{src}:build"])
    assert out.exit_code == 0, out.output
    for text in ("Conv1d", "Conv3d", "up_twin", "in_proj_weight", "tied"):
        assert text in out.output, text


def test_convert_dense_keeps_conv1d_outputs():
    case = CASES[0]
    model, inputs = _build(case), case.inputs()
    spruce.prune(model, "group", 0.5)
    fast = spruce.convert(model, backend="dense", example_input=inputs)
    rows = {r.name: r for r in fast.spruce_report.rows}
    assert rows["h.0.mlp.c_fc"].backend == "dense"  # no backend serves Conv1D: kept dense
    torch.testing.assert_close(_out(fast, inputs), _out(model, inputs))
