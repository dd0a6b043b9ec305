"""Every public VideoMamba release layout loads into the encoder, with a report; bad files get clear errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_videomamba_config

from gemma3.model.videomamba import VideoMambaModel
from gemma3.model.videomamba_checkpoints import CheckpointError, load_videomamba_checkpoint
from gemma3.model.videomamba_releases import LAYOUTS, write_release

FINAL_NORM = {"umt": "norm", "supervised": "norm_f", "masked_pretrain": "norm", "image": "norm_f"}


def _by_hand(layout: str, state: dict, model: VideoMambaModel) -> VideoMambaModel:
    """The same weights put into the encoder key by key, following the official layouts directly."""
    own = model.state_dict()
    prefix = "vision_encoder." if layout == "umt" else ""
    with torch.no_grad():
        for key, param in own.items():
            src = prefix + key.replace("norm_f", FINAL_NORM[layout])
            if layout == "image" and key == "temporal_pos_embedding":
                param.zero_()
            elif layout == "image" and key == "patch_embed.proj.weight":
                param.copy_(state[src][:, :, None].float())
            else:
                param.copy_(state[src].float())
    return model


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_release_loads_like_by_hand(tmp_path, layout):
    cfg = tiny_videomamba_config(num_frames=2)
    state = write_release(tmp_path / f"{layout}.pth", layout)
    model = VideoMambaModel(cfg)
    report = load_videomamba_checkpoint(model, tmp_path / f"{layout}.pth")
    assert report.layout == layout and report.missing == []
    assert len(report.loaded) == len(model.state_dict())
    # Everything in the file is either loaded or ignored with a reason; nothing vanished.
    prefix = "vision_encoder." if layout == "umt" else ""
    loaded_src = {prefix + k.replace("norm_f", FINAL_NORM[layout]) for k in report.loaded}
    assert set(state) - loaded_src == set(report.ignored)
    if layout == "umt":
        reasons = set(report.ignored.values())
        assert {"text tower (BERT)", "CLIP distillation teacher", "CLIP distillation decoder"} <= reasons
    manual = _by_hand(layout, state, VideoMambaModel(cfg))
    model.eval(), manual.eval()
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), manual(x), rtol=0, atol=0)


def test_adaptations_are_reported(tmp_path):
    write_release(tmp_path / "in1k.pth", "image", size=64)  # 8x8 patches, 2D kernel, no temporal embedding
    cfg = tiny_videomamba_config(num_frames=4)  # 4x4 patches, 4 frames
    report = load_videomamba_checkpoint(VideoMambaModel(cfg), tmp_path / "in1k.pth")
    assert report.adapted == [
        "patch_embed.proj.weight 2D -> 3D (tubelet 1)",
        "temporal_pos_embedding zero-initialised (image checkpoint)",
        "pos_embed 8x8 -> 4x4 patches",
    ]
    write_release(tmp_path / "k400.pth", "supervised", t=8)
    report = load_videomamba_checkpoint(VideoMambaModel(cfg), tmp_path / "k400.pth")
    assert report.adapted == ["temporal_pos_embedding 8 -> 4 frames"]
    assert set(report.ignored.values()) == {"classification head"}


def test_bad_files_get_clear_errors(tmp_path):
    cfg = tiny_videomamba_config(num_frames=2)
    write_release(tmp_path / "umt.pth", "umt")
    data = (tmp_path / "umt.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable PyTorch checkpoint"):
        load_videomamba_checkpoint(VideoMambaModel(cfg), tmp_path / "cut.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match=r"foreign\.pth: unknown checkpoint layout"):
        load_videomamba_checkpoint(VideoMambaModel(cfg), tmp_path / "foreign.pth")
    state = torch.load(tmp_path / "umt.pth")
    del state["vision_encoder.layers.1.mixer.A_b_log"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth .*missing \['layers\.1\.mixer\.A_b_log'\]"):
        load_videomamba_checkpoint(VideoMambaModel(cfg), tmp_path / "missing.pth")
    write_release(tmp_path / "wide.pth", "supervised", d=48)  # a bigger model than the config
    model = VideoMambaModel(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"wide\.pth: cls_token has shape \(1, 1, 48\), the configured"):
        load_videomamba_checkpoint(model, tmp_path / "wide.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    with pytest.raises(FileNotFoundError, match="not found"):
        load_videomamba_checkpoint(VideoMambaModel(cfg), tmp_path / "none.pth")
