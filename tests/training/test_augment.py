"""Augmentation presets and the YAML file that overrides them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("albumentations")
import albumentations as A

from qcstation.training.augment import AugmentationError, load_augmentation, load_config

pytestmark = pytest.mark.train


def image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((32, 32), np.uint8)
    img[2:6, 20:28] = 255
    mask = (img > 0).astype(np.uint8)
    return img, mask


@pytest.mark.parametrize("preset", ["light", "default", "heavy"])
def test_presets_move_image_and_mask_together(preset: str) -> None:
    aug = load_augmentation(preset)
    np.random.seed(1)
    for _ in range(10):
        img, mask = aug(*image_and_mask())
        assert img.shape == mask.shape == (32, 32)
        # the mask still marks the bright bar wherever it went (lighting changes the pixels, not the place)
        assert mask.sum() > 0
        assert img[mask > 0].mean() > img[mask == 0].mean()


def test_yaml_overrides_a_preset(tmp_path: Path) -> None:
    f = tmp_path / "aug.yaml"
    f.write_text("preset: light\nrotate90: false\nstrength: 0.5\n")
    cfg = load_config(f)
    assert (cfg.preset, cfg.rotate90, cfg.strength) == ("light", False, 0.5)
    aug = load_augmentation(str(f), rotate90=True)
    # with no turns, the horizontal bar at the top stays horizontal whatever the flips do
    for _ in range(20):
        _, mask = aug(*image_and_mask())
        ys, xs = np.nonzero(mask)
        assert np.ptp(xs) > np.ptp(ys)


def test_yaml_pipeline_replaces_the_preset(tmp_path: Path) -> None:
    f = tmp_path / "aug.yaml"
    A.save(A.Compose([A.VerticalFlip(p=1.0)]), str(f), data_format="yaml")
    text = f.read_text()
    f.write_text("pipeline:\n" + "".join(f"  {line}\n" for line in text.splitlines()))
    img, mask = image_and_mask()
    out_img, out_mask = load_augmentation(f)(img, mask)
    np.testing.assert_array_equal(out_img, img[::-1])
    np.testing.assert_array_equal(out_mask, mask[::-1])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("preset: wild\n", "preset"),
        ("presets: default\n", "Extra inputs are not permitted"),
        ("strength: -1\n", "strength"),
        ("- just a list\n", "expected a mapping, got list"),
        ("pipeline: {transform: {__class_fullname__: NoSuchTransform}}\n", "albumentations cannot build it"),
        ("pipeline: {transform: {__class_fullname__: VerticalFlip, p: 1.0}}\n", "must be a Compose"),
    ],
)
def test_bad_yaml_files_are_refused_with_a_reason(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "aug.yaml"
    f.write_text(text)
    with pytest.raises(AugmentationError, match=match):
        load_augmentation(f)


def test_a_name_that_is_neither_preset_nor_file(tmp_path: Path) -> None:
    with pytest.raises(AugmentationError, match="neither a preset"):
        load_augmentation(str(tmp_path / "missing.yaml"))


def test_a_seeded_augmentation_repeats_itself_whatever_the_global_random_state(tmp_path: Path) -> None:
    from qcstation.training.data import train_transform

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32), dtype=np.uint8) for _ in range(12)]
    mask = np.zeros((32, 32), np.uint8)
    f = tmp_path / "aug.yaml"
    f.write_text("preset: heavy\nstrength: 1.2\n", encoding="utf-8")

    def outputs(make, global_seed: int) -> list[np.ndarray]:
        np.random.seed(global_seed)  # albumentations must not depend on it
        aug = make()
        return [aug(img, mask)[0] for img in images]

    for make in (
        lambda: load_augmentation("default", seed=7),
        lambda: load_augmentation(f, seed=7),
        lambda: train_transform(16, seed=7),
    ):
        first, again = outputs(make, 1), outputs(make, 2)
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # another seed, another stream
    a = outputs(lambda: load_augmentation("default", seed=7), 1)
    b = outputs(lambda: load_augmentation("default", seed=8), 1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_defectnet_batches_repeat_for_a_seed() -> None:
    from qcstation.training.defectnet import BatchMaker, Pool

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (24, 24), dtype=np.uint8) for _ in range(8)]
    masks = [np.zeros((24, 24), np.uint8) for _ in range(8)]
    for m in masks[1::2]:
        m[5:9, 5:9] = 1
    pool = Pool(images, masks)

    def batch(seed: int, global_seed: int) -> np.ndarray:
        np.random.seed(global_seed)
        return BatchMaker(pool, 16, paste_share=0.5, seed=seed)()[0].numpy()

    np.testing.assert_array_equal(batch(3, 1), batch(3, 2))
    assert not np.array_equal(batch(3, 1), batch(4, 1))
