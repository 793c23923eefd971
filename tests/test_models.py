"""The model zoo: every ``configs/model`` choice builds from its real config, learns on a fixed batch in
each dimensionality it supports, and rejects impossible combinations at start-up with one line
that names both sides. Also the speed options: bf16 autocast, channels-last, torch.compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from segbench.config import CONFIG_DIR
from segbench.errors import ConfigError, unwrap
from segbench.models import MODELS, TransUNet, UNet
from segbench.runtime.build import build

#: per model: overrides that shrink it to a few thousand parameters (widths, ViT size, levels)
SMALL = {
    "unet": ["model.width=4", "model.depth=3"],
    "unet3d": ["model.width=4", "model.depth=3"],
    "unetpp": ["model.width=4"],
    "attention_unet": ["model.width=4", "model.depth=3"],
    "segresnet": ["model.width=8", "model.blocks_down=[1,1,1]"],
    "swin_unetr": ["model.width=12", "+model.depths=[1,1,1,1]", "+model.window_size=4"],
    "unetr": ["model.width=4", "model.hidden_size=16", "model.mlp_dim=32", "model.num_heads=2",
              "model.num_layers=4"],
    "unetr_pp": ["model.width=4", "model.depths=[1,1,1,1]", "model.decoder_depth=1", "model.num_heads=2",
                 "model.proj_size=[8,8,8,4]", "model.decoder_proj_size=8"],
    "transunet": ["model.width=8", "model.encoder_blocks=[1,1,1]", "model.hidden_size=16", "model.mlp_dim=32",
                  "model.num_heads=2", "model.num_layers=2"],
}
#: the dimensionalities each model supports
DIMS = {"unet": (2, 3), "unet3d": (3,), "unetpp": (2, 3), "attention_unet": (2, 3), "segresnet": (2, 3),
        "swin_unetr": (2, 3), "unetr": (2, 3), "unetr_pp": (3,), "transunet": (2,)}
#: input sides (Swin UNETR: multiples of 32, at least 64; UNETR / TransUNet: multiples of 16)
SIZE = {2: 32, 3: 16}


pytestmark = pytest.mark.usefixtures("one_thread")


def compose_run(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def input_shape(name: str, dims: int) -> tuple[int, ...]:
    if name == "swin_unetr":
        return (64,) * dims  # InstanceNorm at 1/32 needs 2 voxels
    if name == "unetpp" and dims == 3:
        return (32, 16, 16)  # four poolings must leave > 1 voxel for InstanceNorm
    if name == "unetr_pp":
        return (16, 32, 32)  # the (2, 4, 4) stem and three halvings: multiples of (16, 32, 32)
    return (SIZE[dims],) * dims


def model_config(name: str, dims: int, *extra: str):
    shape = input_shape(name, dims)
    data = ["data=phantom", f"data.img_size={shape[0]}"] if dims == 2 else \
        ["data=phantom3d", f"data.patch_size=[{','.join(map(str, shape))}]"]
    return compose_run(f"model={name}", *data, *SMALL[name], *extra)


def test_every_config_has_a_model_and_the_small_settings():
    configs = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
    assert configs == sorted(MODELS) == sorted(SMALL) == sorted(DIMS)
    for path in (Path(CONFIG_DIR) / "model").glob("*.yaml"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert 5 <= len(lines) <= 15, f"{path.name}: {len(lines)} lines"
        assert lines[0].startswith("#"), f"{path.name} opens with a comment naming the paper / library"


def test_input_size_comes_from_the_data_config():
    # the slice size in 2D, the patch size in 3D; no 2D key is needed in a 3D data config
    assert compose_run("~experiment", "model=unetr", "data=phantom").model.img_size == 224
    assert list(compose_run("~experiment", "model=unetr", "data=phantom3d").model.img_size) == [64, 96, 96]
    assert list(compose_run("model=unetr", "data=phantom3d", "debug=smoke").model.img_size) == [64, 96, 96]


#: the slowest to build and train on a CPU (~15 s): in the full run only
SLOW_MODELS = {("swin_unetr", 3)}


@pytest.mark.parametrize("name,dims", [pytest.param(n, d, marks=pytest.mark.slow if (n, d) in SLOW_MODELS else ())
                                       for n in sorted(DIMS) for d in DIMS[n]])
def test_model_builds_from_its_config_and_learns_a_fixed_batch(name, dims):
    torch.manual_seed(0)
    cfg = model_config(name, dims, "loss=ce_dice")
    _, module = build(cfg)
    shape = input_shape(name, dims)
    # a learnable fixed batch: class k where the image falls in the k-th of 9 intensity bands
    image = torch.rand(2, 1, *shape)
    label = (image[:, 0] * 9).long().clamp(max=8)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    module.train()
    losses = []
    for _ in range(4):
        logits = module(image)
        assert logits.shape == (2, 9, *shape)
        loss = module.loss_fn(logits, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = module.loss_fn(module(image), label).item()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert final < losses[0], f"{name} {dims}D: loss {losses[0]:.4f} -> {final:.4f}"


@pytest.mark.parametrize("overrides,message", [
    # a 2D-only model on 3D data and a 3D-only model on 2D data
    (["model=transunet", "data=phantom3d"],
     "model=transunet supports 2D only, not data.spatial_dims=3"),
    (["model=unet3d", "data=phantom"], "model=unet3d supports 3D only, not data.spatial_dims=2"),
    # UNETR's ViT cuts 16-voxel patches: 40 is not a multiple of 16
    (["model=unetr", "data=phantom", "data.img_size=40"],
     "model=unetr cannot take data.img_size=40: the ViT patch size 16 needs every side to be a multiple of 16"),
    (["model=unetr", "data=phantom3d", "data.patch_size=[40,48,48]"],
     "model=unetr cannot take data.patch_size=[40, 48, 48]"),
    # TransUNet tokenises the 1/16 CNN map: 200 / 16 is not whole
    (["model=transunet", "data=phantom", "data.img_size=200"], "model=transunet cannot take data.img_size=200"),
    # Attention U-Net with 5 levels halves 4 times: 72 / 16 is not whole
    (["model=attention_unet", "data=phantom", "data.img_size=72"],
     "model=attention_unet cannot take data.img_size=72: its 4 stride-2 downsamplings"),
    (["model=segresnet", "model.width=12"], "model=segresnet: model.width=12 must be a positive multiple of 8"),
    (["model=swin_unetr", "model.width=16"], "model=swin_unetr: model.width=16 must be a positive multiple of 12"),
    (["model=swin_unetr", "model.width=12", "data=phantom", "data.img_size=48"],
     "model=swin_unetr cannot take data.img_size=48"),
    (["model=swin_unetr", "model.width=12", "data=phantom3d", "data.patch_size=[32,64,64]"],
     "model=swin_unetr cannot take data.patch_size=[32, 64, 64]: its patch size 2 and four patch mergings (2**5) "
     "needs every side to be a multiple of 32 and at least 64"),
    # the smoke overlay's model.depth is a U-Net knob; fixed-depth models say so instead of ignoring it
    (["model=unetpp", "+model.depth=4"], "model=unetpp has a fixed number of resolution levels"),
    (["model=unetr_pp", "data=phantom"], "model=unetr_pp supports 3D only, not data.spatial_dims=2"),
    (["model=unetr_pp", "data=phantom3d", "data.patch_size=[16,48,48]"],
     "model=unetr_pp cannot take data.patch_size=[16, 48, 48]: the stem (patch [2, 4, 4]) and three halvings"),
    # deep supervision needs decoder outputs at several scales (tests/test_deep_supervision.py has the rest)
    (["model=transunet", "model.deep_supervision=true"], "model=transunet has no deep supervision"),
    (["model=unet", "model.depth=3", "model.deep_supervision=true"],
     "model=unet has 2 decoder scale(s); model.deep_supervision=true (nnU-Net's heads: every decoder scale but the "
     "lowest) leaves no head; set model.depth >= 4, or pass model.deep_supervision=1 (the 1/2 scale)"),
])
def test_unsupported_combination_fails_when_built(overrides, message):
    cfg = compose_run(*overrides)
    with pytest.raises(Exception) as info:
        build(cfg)
    error = unwrap(info.value)
    assert isinstance(error, ConfigError)
    assert str(error).startswith(message)
    assert "\n" not in str(error)


def test_swin_unetr_without_einops_says_what_to_install(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "einops" else real_find_spec(name, *a))
    with pytest.raises(Exception) as info:
        build(compose_run("model=swin_unetr", "model.width=12", "data=phantom", "data.img_size=64"))
    assert str(unwrap(info.value)).startswith("model=swin_unetr needs the 'einops' package")


def test_a_run_stops_at_start_up_with_one_line_before_reading_data(tmp_path, capsys):
    from segbench.errors import report_error
    from segbench.runtime.task import run

    cfg = compose_run("model=transunet", "data=phantom3d", f"paths.data_dir={tmp_path}/data")
    with pytest.raises(Exception) as info:
        run(cfg, tmp_path / "run")
    report_error(unwrap(info.value), "segbench-train")  # what the command line prints
    assert capsys.readouterr().err == ("segbench-train: error: model=transunet supports 2D only, not "
                                       "data.spatial_dims=3; choose another model or a 2D data config\n")
    assert not (tmp_path / "data").exists()  # stopped before the phantom was generated


def test_unetr_follows_monai_layout_and_size():
    from segbench.models import UNETR

    # ViT-B/16 + feature_size 16 on 96^3: MONAI's UNETR has 92,802,393 parameters, of which
    # 12 x 2 x 768 = 18,432 are LayerNorms it creates but never uses (norm_cross_attn)
    net = UNETR(num_classes=9, img_size=96)
    assert sum(p.numel() for p in net.parameters()) == 92_802_393 - 18_432
    keys = set(net.state_dict())
    assert {"vit.patch_embedding.position_embeddings", "vit.blocks.11.attn.qkv.weight", "vit.norm.weight",
            "encoder2.transp_conv_init.conv.weight", "decoder5.transp_conv.conv.weight", "out.conv.conv.weight"} <= keys


def test_unetr_equals_monai_unetr_with_the_same_weights():
    from monai.networks.nets import UNETR as MonaiUNETR

    from segbench.models import UNETR

    torch.manual_seed(0)
    ours = UNETR(num_classes=3, img_size=32, width=4, hidden_size=32, mlp_dim=64, num_heads=2).eval()
    theirs = MonaiUNETR(1, 3, img_size=32, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2).eval()
    theirs.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(1, 1, 32, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def epa_block_parameters(tokens: int, channels: int, proj: int, heads: int) -> int:
    """One UNETR++ transformer block, counted from its parts:
    position embedding N C; LayerNorm 2 C; layer scale C; EPA: temperatures 2 h, q/k/v/v 4 C^2 (no bias),
    token projection N P + P, two output projections 2 (C C/2 + C/2); residual conv block (two 3^3 convs
    without bias, two BatchNorms) 54 C^2 + 4 C; the 1 x 1 conv C^2 + C."""
    c = channels
    return (tokens * c + 2 * c + c + 2 * heads + 4 * c * c + tokens * proj + proj + c * c + c
            + 54 * c * c + 4 * c + c * c + c)


def test_unetr_pp_parameter_count_is_the_architectures():
    from segbench.models import UNETRPP

    # a small UNETR++: width 4 (stages 8, 16, 32, 64), one EPA block per stage, input 16 x 32 x 32:
    # tokens per stage (16/2, 32/4, 32/4) / 2^i -> 512, 64, 8, 1
    w, heads, classes = 4, 2, 3
    ch, tokens, proj = [8, 16, 32, 64], [512, 64, 8, 1], [8, 8, 8, 4]
    net = UNETRPP(num_classes=classes, img_size=(16, 32, 32), width=w, depths=(1, 1, 1, 1), decoder_depth=1,
                  num_heads=heads, proj_size=proj, decoder_proj_size=8)
    stem = 1 * ch[0] * (2 * 4 * 4) + 2 * ch[0]                          # conv (2,4,4), GroupNorm
    downs = sum(ch[i] * ch[i + 1] * 8 + 2 * ch[i + 1] for i in range(3))  # conv 2^3, GroupNorm
    encoder = sum(epa_block_parameters(tokens[i], ch[i], proj[i], heads) for i in range(4))
    full_res_stem = 27 * 1 * w + 27 * w * w + 1 * w                       # ResBlock 1 -> w (+1x1), InstanceNorm
    ups = sum(ch[i + 1] * ch[i] * 8 for i in range(3))                    # transposed convs 2^3, no bias
    decoder = sum(epa_block_parameters(tokens[i], ch[i], 8, heads) for i in range(3))
    up_full = ch[0] * w * 32 + 2 * 27 * w * w                             # transposed (2,4,4) + ResBlock w -> w
    head = w * classes + classes
    expected = stem + downs + encoder + full_res_stem + ups + decoder + up_full + head
    assert sum(p.numel() for p in net.parameters()) == expected == 474_819
    assert net(torch.randn(2, 1, 16, 32, 32)).shape == (2, classes, 16, 32, 32)
    # the paper's Synapse network (64 x 128 x 128 input, 14 classes) has 42.96 M parameters with its two
    # deep-supervision heads (1 x 1 convolutions from 2w = 32 and 4w = 64 channels: 32 x 14 + 14 + 64 x 14 + 14
    # = 1,372 of them), which segbench builds with model.deep_supervision=true
    paper = UNETRPP(num_classes=14, img_size=(64, 128, 128), deep_supervision=True)
    heads = sum(p.numel() for p in paper.ds_heads.parameters())
    assert heads == 32 * 14 + 14 + 64 * 14 + 14
    assert sum(p.numel() for p in paper.parameters()) / 1e6 == pytest.approx(42.96, abs=0.01)
    assert (sum(p.numel() for p in paper.parameters()) - heads) / 1e6 == pytest.approx(42.95, abs=0.01)


def test_transunet_paper_configuration_size():
    # R50-ViT-B/16 at 224 x 224, 9 classes, one input channel: ResNet-50 stages [3, 4, 9] to 1/16, 14 x 14 tokens
    net = TransUNet(num_classes=9, img_size=224)
    params = sum(p.numel() for p in net.parameters())
    assert params == pytest.approx(105e6, rel=0.03)  # the TransUNet paper: 105.3 M (3-channel input)
    assert net.grid_size == (14, 14) and net.position_embeddings.shape == (1, 196, 768)


def test_transunet_pretrained_path_is_local_and_key_checked(tmp_path):
    small = {"num_classes": 3, "img_size": 32, "width": 8, "encoder_blocks": [1, 1, 1], "hidden_size": 16,
             "mlp_dim": 32, "num_heads": 2, "num_layers": 2}
    source = TransUNet(**small)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = TransUNet(**small, pretrained_path=str(path))
    assert loaded.pretrained_report["missing"] == [] and loaded.pretrained_report["unexpected"] == []
    torch.testing.assert_close(loaded.position_embeddings, source.position_embeddings)
    # 4 classes: the segmentation head's weight and bias no longer fit
    with pytest.raises(ConfigError, match=r"2 shape-mismatched; first: segmentation_head.weight"):
        TransUNet(**{**small, "num_classes": 4}, pretrained_path=str(path))
    partial = TransUNet(**{**small, "num_classes": 4}, pretrained_path=str(path), pretrained_strict=False)
    assert len(partial.pretrained_report["mismatched"]) == 2
    torch.testing.assert_close(partial.position_embeddings, source.position_embeddings)
    with pytest.raises(ConfigError, match="is not a file .*never downloaded"):
        TransUNet(**small, pretrained_path=str(tmp_path / "R50+ViT-B_16.npz"))


# -- speed options: each must give the same numbers as the plain fp32 network -------------------------------
def small_unet_module(*extra: str):
    torch.manual_seed(0)
    _, module = build(compose_run("model=unet", "model.width=4", "model.depth=3", "data.img_size=32", *extra))
    return module.eval()


def test_bf16_mixed_precision_loss_is_finite_and_close_to_fp32():
    from pytorch_lightning.plugins.precision import MixedPrecision

    module = small_unet_module()
    image = torch.rand(4, 1, 32, 32)
    label = (image[:, 0] * 9).long().clamp(max=8)
    fp32 = module.loss_fn(module(image), label)
    # what trainer.precision=bf16-mixed runs the steps under on a CPU
    with MixedPrecision("bf16-mixed", "cpu").forward_context():
        logits = module(image)
        bf16 = module.loss_fn(logits, label)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(bf16)
    # bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4 %); the loss is an average, so it stays within 1 %
    assert bf16.item() == pytest.approx(fp32.item(), rel=1e-2)


def test_channels_last_gives_the_contiguous_output():
    plain = small_unet_module()
    fast = small_unet_module("channels_last=true")
    fast.load_state_dict(plain.state_dict())
    image = torch.rand(2, 1, 32, 32)
    assert fast.net.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(image).contiguous(), plain(image), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # inductor compiles C++
def test_compile_gives_the_eager_output():
    # inductor generates and compiles C++ on a CPU: the smallest U-Net keeps this test to seconds (warm cache)
    torch.manual_seed(0)
    cfg = compose_run("model=unet", "model.width=2", "model.depth=2", "data.img_size=16", "compile=true")
    _, module = build(cfg)
    net = module.net.eval()
    assert net._compiled_call_impl is not None
    eager = UNet(num_classes=9, width=2, depth=2).eval()
    eager.load_state_dict(net.state_dict())  # same keys: compiling does not rename parameters
    image = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(image), eager(image), atol=1e-5, rtol=1e-5)
