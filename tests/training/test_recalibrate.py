"""`qcstation calibrate`: thresholds set on a line's own good parts, as the station then judges them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from model_factory import ModelFactory

pytest.importorskip("torch")
pytestmark = pytest.mark.train

from scipy.stats import beta  # noqa: E402

from qcstation.inspect import Detector  # noqa: E402
from qcstation.station.recipe import load_recipe  # noqa: E402
from qcstation.station.rules import judge  # noqa: E402
from qcstation.station.types import Verdict  # noqa: E402
from qcstation.training.errors import DatasetError, TrainingError  # noqa: E402
from qcstation.training.recalibrate import frr_upper_bound, good_parts_needed, recalibrate_main  # noqa: E402
from training.layout_data import WRITERS  # noqa: E402


def _good_parts(folder: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """n bright parts, each with one dark speck of its own grey level (so each scores its own 'dark')."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    levels = rng.permutation(np.arange(105, 105 + n)).astype(np.uint8)  # n <= 100: one grey level each
    images = []
    for i, v in enumerate(levels):
        img = np.full((64, 64), 215, np.uint8)
        img[20:26, 30:36] = v
        assert cv2.imwrite(str(folder / f"part_{i:04d}.png"), img)
        images.append(img)
    return images


def _unlabelled(root: Path) -> list[Path]:
    """The good images of a YOLO folder: no label file, or an empty one."""
    labels = root / "labels"
    return [
        p
        for p in sorted((root / "images").glob("*.png"))
        if not (labels / f"{p.stem}.txt").exists() or not (labels / f"{p.stem}.txt").read_text().strip()
    ]


def test_the_thresholds_reject_the_target_share_of_good_parts_and_the_station_agrees(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    # given a model whose "dark" score rises as a speck darkens, and 100 good parts of the line
    model = make_model(classes=("good", "dark"))
    images = _good_parts(tmp_path / "good", 100)
    det = Detector.from_path(model)
    scores = sorted((det.inspect(img).class_scores["dark"] for img in images), reverse=True)
    assert len(set(scores)) == 100  # every part its own score: the 5 % point is one exact place

    # when calibrated for 5 % false rejects
    res = recalibrate_main(model, tmp_path / "good", target_false_reject=0.05)

    # then exactly the five highest-scored parts reach the threshold, and the bound is Clopper-Pearson's
    t = res["thresholds"]["dark"]
    assert scores[5] < t <= scores[4]
    assert (res["good_images"], res["defective_images"], res["false_rejects"]) == (100, 0, 5)
    assert res["false_reject_upper_bound"] == pytest.approx(frr_upper_bound(5, 100), abs=1e-6)
    assert 0.09 < res["false_reject_upper_bound"] < 0.12 and res["recall"] is None
    # 100 parts are too few to know a 5 % rate within a factor of two: said, with how many would be
    assert res["good_parts_needed"] > 100
    assert any(f"about {res['good_parts_needed']} good parts" in w for w in res["warnings"])

    # and the fragment, merged into a recipe, makes the station's own judgement fail those five parts
    recipe_file = tmp_path / "recipe.yaml"
    fragment = yaml.safe_load(res["recipe"])
    recipe_file.write_text(yaml.safe_dump({"product": "p", "model": str(model), **fragment}))
    loaded = load_recipe(recipe_file)
    thresholds = det.thresholds({c: r.threshold for c, r in loaded.recipe.classes.items()})
    verdicts = [judge(det.inspect(img, thresholds=thresholds), loaded.recipe, thresholds) for img in images]
    assert sum(v.verdict is Verdict.FAIL for v in verdicts) == 5


def test_labelled_defects_give_the_recall_and_do_not_move_the_thresholds(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    # given a labelled set: good parts, dark discs (the model sees them) and bright bars (it does not)
    model = make_model(classes=("good", "dark"))
    root = WRITERS["yolo_seg"](tmp_path / "y", count=30)
    goods_only = tmp_path / "goods"
    goods_only.mkdir()
    for p in _unlabelled(root):
        goods_only.joinpath(p.name).write_bytes(p.read_bytes())

    # when calibrated on the whole set and on its good parts alone
    both = recalibrate_main(model, root, target_false_reject=0.1)
    alone = recalibrate_main(model, goods_only, target_false_reject=0.1)

    # then the defective parts only add the recall: the discs (half of them) are caught, not every bar
    assert (both["good_images"], both["defective_images"]) == (10, 20)
    assert both["thresholds"] == alone["thresholds"] and both["false_rejects"] == 1
    assert 0.5 <= both["recall"] < 1.0
    assert both["card"]["recall"] is not None and "thresholds" in both["card"]


def test_a_class_no_good_part_scores_on_keeps_a_floor_not_a_threshold_near_zero(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    # given good parts with no dark speck at all: the "dark" class scores ~0 on every one
    model = make_model(classes=("good", "dark"))
    (tmp_path / "clean").mkdir()
    for i in range(20):
        assert cv2.imwrite(str(tmp_path / "clean" / f"p{i}.png"), np.full((64, 64), 230 - i, np.uint8))
    top = max(Detector.from_path(model).inspect(np.full((64, 64), 211, np.uint8)).class_scores.values())
    assert top < 0.01
    # when calibrated, the threshold is the floor, not "just above the best good score" (that would fail parts
    # on noise no good part happened to show); a floor of one's own is taken as given
    assert recalibrate_main(model, tmp_path / "clean")["thresholds"] == {"dark": 0.3}
    assert recalibrate_main(model, tmp_path / "clean", min_threshold=0.05)["thresholds"] == {"dark": 0.05}
    with pytest.raises(TrainingError, match="minimum threshold"):
        recalibrate_main(model, tmp_path / "clean", min_threshold=0.0)


def test_a_recipe_s_ignore_area_is_left_out_as_the_station_leaves_it(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    # given good parts whose dark specks all lie in an area the product's recipe ignores
    model = make_model(classes=("good", "dark"))
    _good_parts(tmp_path / "good", 40)
    recipe = tmp_path / "recipe.yaml"
    area = [[0.4, 0.25], [0.6, 0.25], [0.6, 0.45], [0.4, 0.45]]  # the specks sit at x 0.47-0.56, y 0.31-0.41
    recipe.write_text(yaml.safe_dump({"product": "p", "model": str(model), "ignore": [area]}))
    # when calibrated with and without the recipe
    plain = recalibrate_main(model, tmp_path / "good", target_false_reject=0.05)
    masked = recalibrate_main(model, tmp_path / "good", target_false_reject=0.05, recipe=recipe)
    # then without it the specks set the threshold; with it nothing scores, and the floor is left
    assert plain["false_rejects"] == 2 and plain["thresholds"]["dark"] > 0.3
    assert masked["thresholds"] == {"dark": 0.3} and masked["false_rejects"] == 0
    assert masked["recipe_file"] == str(recipe)


def test_the_upper_bound_is_clopper_pearson() -> None:
    assert frr_upper_bound(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))  # no reject: the "rule of 3"
    assert frr_upper_bound(100, 100) == 1.0
    assert frr_upper_bound(2, 100) > frr_upper_bound(2, 1000)
    assert frr_upper_bound(5, 100, 0.99) > frr_upper_bound(5, 100, 0.95)
    # the fewest good parts whose bound, at 2 % of them rejected, is within 4 %
    n = good_parts_needed(0.02)
    assert beta.ppf(0.95, 0.02 * n + 1, 0.98 * n) <= 0.04 < beta.ppf(0.95, 0.02 * (n - 1) + 1, 0.98 * (n - 1))
    assert good_parts_needed(0.05) < n < good_parts_needed(0.01)
    with pytest.raises(ValueError, match="rejected <= good"):
        frr_upper_bound(3, 2)


def test_calibration_without_a_good_part_or_with_a_bad_target_is_refused(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    model = make_model(classes=("good", "dark"))
    root = WRITERS["yolo_seg"](tmp_path / "y", count=6)
    for p in _unlabelled(root):  # only the defective parts stay
        p.unlink()
    with pytest.raises(DatasetError, match="no readable good image"):
        recalibrate_main(model, root)
    with pytest.raises(TrainingError, match=r"false-reject target in \(0, 0.5\]"):
        recalibrate_main(model, root, target_false_reject=2.0)


def test_the_command_writes_the_recipe_fragment_and_names_unreadable_files(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    model = make_model(classes=("good", "dark"))
    _good_parts(tmp_path / "good", 40)
    (tmp_path / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    res = subprocess.run(
        [sys.executable, "-m", "qcstation.cli", "calibrate", str(model), str(tmp_path / "good"),
         "--target-frr", "0.05", "--out", str(tmp_path / "frag.yaml")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    assert shown["good_images"] == 40 and shown["false_rejects"] == 2
    assert "broken.png" in res.stderr
    frag = yaml.safe_load((tmp_path / "frag.yaml").read_text())
    assert frag == {"classes": {"dark": {"threshold": shown["thresholds"]["dark"]}}}
    bad = subprocess.run(
        [sys.executable, "-m", "qcstation.cli", "calibrate", str(model), str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "nowhere" in bad.stderr and "Traceback" not in bad.stderr
    unwritable = subprocess.run(
        [sys.executable, "-m", "qcstation.cli", "calibrate", str(model), str(tmp_path / "good"),
         "--target-frr", "0.05", "--out", str(tmp_path / "no" / "such" / "frag.yaml")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # a file that cannot be written loses nothing: the fragment goes to stdout, and the exit says why
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    assert yaml.safe_load(unwritable.stdout[unwritable.stdout.rindex("# qcstation calibrate") :]) == frag
