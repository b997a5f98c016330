"""ONNX export of the whole inference graph: onnxruntime's outputs equal PyTorch's (1e-4 absolute:
BN folding and another runtime reorder float32 operations), for any batch size; the metadata carry
the config and thresholds."""
import numpy as np
import pytest
import torch

from destseg_lib.checkpoint import atomic_torch_save, make_checkpoint
from destseg_lib.config import get_preset
from destseg_lib.infer import predict
from destseg_lib.models import DeSTSeg

ort = pytest.importorskip("onnxruntime", reason="pip install 'destseg-kit[onnx]'")
pytest.importorskip("onnx")
TOL = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("over", [{}, {"student_arch": "teacher_decoder", "seg_fusion": "adaptive"},
                                  {"segmentation": False}], ids=["destseg", "pfadseg", "dest_only"])
def test_onnx_equals_pytorch(tmp_path, over):
    from destseg_lib.export import OnnxScorer, export_checkpoint, read_metadata

    torch.manual_seed(0)
    cfg = get_preset("ci", **over)
    model = DeSTSeg.from_config(cfg, teacher_weights="checkpoint").eval()
    ckpt = make_checkpoint(model, cfg, finished=True)
    ckpt["thresholds"] = {"image": 0.25, "pixel": 0.5, "rule": "best_f1"}
    atomic_torch_save(ckpt, tmp_path / "m.pt")
    path = export_checkpoint(tmp_path / "m.pt", tmp_path / "m.onnx")
    meta = read_metadata(path)
    assert meta["destseg_config"]["seg_width"] == cfg.seg_width and meta["destseg_thresholds"]["pixel"] == 0.5
    scorer = OnnxScorer(path, threads=1)
    for batch in (1, 3):
        x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(batch))
        ref = predict(model, x, cfg.top_t)
        out = scorer.run(x)
        for key in ("anomaly_map", "score", "de_st_map", "de_st_score"):
            assert out[key].shape == tuple(ref[key].shape)
            assert np.abs(out[key] - ref[key].numpy()).max() < TOL, key


def test_missing_onnx_file_is_a_clear_error(tmp_path):
    from destseg_lib.export import OnnxScorer

    with pytest.raises(FileNotFoundError, match="destseg export"):
        OnnxScorer(tmp_path / "nope.onnx")
