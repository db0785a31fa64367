"""``spruce.export_onnx``: dense, groupwise, channel and compacted models run in onnxruntime
with PyTorch's outputs; backends with no ONNX form are refused, naming the layer."""

import pytest
import torch
from torch import nn

import spruce
from spruce.errors import SpruceError
from tests.conftest import SmallNet

ort = pytest.importorskip("onnxruntime")
from spruce.onnx import onnx_error  # noqa: E402


def run_ort(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {k: v.numpy()
                                                            for k, v in feed.items()})]


@pytest.mark.parametrize("backend,pattern", [("dense", "element"), ("groupwise", "group"),
                                             ("channel", "channel")])
def test_converted_cnn_round_trips_through_onnxruntime(backend, pattern, tmp_path):
    model = SmallNet().eval()
    spruce.prune(model, pattern, 0.5)
    x = torch.randn(2, 3, 8, 8)
    fast = spruce.convert(model, backend, example_input=x)
    assert all(r.backend == backend for r in fast.spruce_report.rows if r.reason is None)
    path = spruce.export_onnx(fast, x, tmp_path / "m.onnx")
    (out,) = run_ort(path, {"input": x})
    torch.testing.assert_close(out, model(x).detach(), rtol=1e-4, atol=1e-5)


def test_compacted_model_round_trips(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
                          nn.Linear(32, 4)).eval()
    spruce.prune(model, "group", 0.5, unit="channel", exclude=["0"])
    x = torch.randn(2, 3, 6, 6)
    small = spruce.compact(model, x)
    assert small.spruce_compaction.compacted
    for target in (small, spruce.convert(small, "groupwise", example_input=x)):
        path = spruce.export_onnx(target, x, tmp_path / "small.onnx")
        (out,) = run_ort(path, {"input": x})
        torch.testing.assert_close(out, model(x).detach(), rtol=1e-3, atol=1e-4)


def test_hf_bert_and_multihead_attention_with_keyword_and_positional_inputs(tmp_path):
    tf = pytest.importorskip("transformers")
    cfg = tf.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    bert = tf.BertForSequenceClassification(cfg).eval()
    spruce.prune(bert, "group", 0.5)
    x = {"input_ids": torch.randint(0, 1000, (2, 8)),
         "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    fast = spruce.convert(bert, "groupwise", example_input=x)
    path = spruce.export_onnx(fast, x, tmp_path / "bert.onnx")
    assert onnx_error(path, fast, x) < 1e-5

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, q, kv):
            return self.fc(self.attn(q, kv, kv, need_weights=False)[0])

    two = Two().eval()
    spruce.prune(two, "channel", 0.5)
    args = (torch.randn(2, 3, 16), torch.randn(2, 5, 16))
    fast = spruce.convert(two, "channel", example_input=args)
    path = spruce.export_onnx(fast, args, tmp_path / "mha.onnx")
    (out,) = run_ort(path, {"input_0": args[0], "input_1": args[1]})
    torch.testing.assert_close(out, two(*args).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,pattern,kw", [("csr", "element", {}),
                                                ("bsr", "block", {"block": (2, 2)})])
def test_sparse_backends_are_refused_naming_layer_and_backend(backend, pattern, kw, tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    spruce.prune(model, pattern, 0.5, **kw)
    fast = spruce.convert(model, backend)
    with pytest.raises(SpruceError, match=f"layer '0'.*backend '{backend}' cannot be exported"):
        spruce.export_onnx(fast, torch.randn(2, 8), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_hf_models_with_dict_outputs_export_and_decoders_are_refused(tmp_path):
    tf = pytest.importorskip("transformers")
    ids = {"input_ids": torch.randint(0, 100, (2, 8))}
    t5 = tf.T5EncoderModel(tf.T5Config(vocab_size=100, d_model=32, d_ff=64, d_kv=8,
                                       num_heads=4, num_layers=1)).eval()
    spruce.prune(t5, "group", 0.5)
    fast = spruce.convert(t5, "dense", example_input=ids)
    assert onnx_error(spruce.export_onnx(fast, ids, tmp_path / "t5.onnx"), fast, ids) < 1e-4
    bert = tf.BertModel(tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=64)).eval()
    assert bert.config.use_cache  # the keyword the exporter used to pass twice
    path = spruce.export_onnx(bert, ids, tmp_path / "bert.onnx")
    assert onnx_error(path, bert, ids) < 1e-4
    llama = tf.LlamaModel(tf.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4)).eval()
    with pytest.raises(SpruceError, match="ONNX exporter cannot export this model"):
        spruce.export_onnx(llama, ids, tmp_path / "llama.onnx")
