"""Enhancement pipeline (post_process.py): operations, presets, preset files, comparison and the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # post_process.py is a top-level script beside the package
    sys.path.insert(0, str(REPO))

import post_process as pp  # noqa: E402
from tests.conftest import missing_resource  # noqa: E402
from xray_generator.evaluation.descriptors import DESCRIPTOR_NAMES  # noqa: E402
from xray_generator.io import read_gray  # noqa: E402

# The repo's own sample first, so the suite runs without the shared data set.
SAMPLE_DIRS = (
    REPO / "dataset" / "images",
    REPO.parent / "shared" / "data" / "cxr" / "images" / "pneumonia_kermany",
)
CLI = [sys.executable, str(REPO / "post_process.py")]
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The preset table from the issue: window centre, window width, edge (unsharp amount), median kernel,
# CLAHE clip limit, CLAHE grid, vignette, histogram equalisation.
ISSUE_TABLE = {
    "Balanced": (0.50, 0.80, 1.3, 3, 2.5, (8, 8), 0.25, True),
    "High Contrast": (0.45, 0.70, 1.5, 3, 3.0, (8, 8), 0.30, True),
    "Sharp Detail": (0.55, 0.85, 1.8, 3, 2.0, (6, 6), 0.20, False),
    "Radiographic Film": (0.48, 0.75, 1.4, 3, 2.8, (7, 7), 0.35, True),
}


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    """A real chest radiograph as float32 (H, W) in [0, 1]."""
    for directory in SAMPLE_DIRS:
        if directory.is_dir():
            first = next(iter(sorted(directory.rglob("*.png"))), None)
            if first is not None:
                return read_gray(first)
    missing_resource("no sample radiograph: neither dataset/images nor ../shared/data/cxr/images/pneumonia_kermany has a PNG",
                     "The sample ships in dataset/images; the full set belongs in ../shared/data/cxr")


def local_contrast(image: np.ndarray, size: int = 7) -> float:
    """Mean standard deviation in size x size neighbourhoods."""
    mean = cv2.blur(image, (size, size))
    mean_sq = cv2.blur(image * image, (size, size))
    return float(np.sqrt(np.maximum(mean_sq - mean * mean, 0)).mean())


def dense_uint16(radiograph: np.ndarray, size: int = 320) -> np.ndarray:
    """Genuinely 16-bit content: a smooth upsampling of the radiograph, not 8-bit values times 257."""
    upsampled = cv2.resize(radiograph, (size, size), interpolation=cv2.INTER_CUBIC)
    return (np.clip(upsampled, 0, 1) * 65535 + 0.5).astype(np.uint16)


# --------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------


def test_window_maps_its_edges_to_black_and_white_and_clips_outside():
    image = np.array([[0.0, 0.1, 0.3, 0.5, 0.9]], np.float32)  # window 0.1 .. 0.5
    out = pp.apply_window(image, center=0.3, width=0.4)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)


@PROPERTY_SETTINGS
@given(center=st.floats(0.0, 1.0), width=st.floats(0.001, 2.0))
def test_window_edges_map_to_zero_and_one_for_any_window(center, width):
    lower, upper = center - width / 2, center + width / 2
    image = np.array([[lower, upper, lower - 0.01, upper + 0.01, center]], np.float32)
    out = pp.apply_window(image, center, width)
    np.testing.assert_allclose(out[0, :4], [0.0, 1.0, 0.0, 1.0], atol=1e-4)
    assert out[0, 4] == pytest.approx(0.5, abs=1e-3)


def test_clahe_raises_local_contrast_of_a_low_contrast_radiograph(radiograph):
    faint = (0.45 + 0.1 * radiograph).astype(np.float32)  # a washed-out film: 10 % of the range
    enhanced = pp.clahe(faint, clip_limit=2.0, tile_grid=(8, 8))
    assert local_contrast(enhanced) > 2.0 * local_contrast(faint)


@PROPERTY_SETTINGS
@given(
    levels=arrays(np.uint8, st.tuples(st.integers(1, 48), st.integers(1, 48))),
    clip_limit=st.floats(0.01, 100.0),
    tile_grid=st.tuples(st.integers(1, 10), st.integers(1, 10)),
)
def test_sixteen_bit_clahe_matches_opencv_8_bit_clahe_on_8_bit_data(levels, clip_limit, tile_grid):
    # Same histograms and clipping at both precisions, so a 16-bit film looks like its 8-bit copy;
    # they differ only by OpenCV rounding its mapping and result to whole 8-bit levels.
    image = levels.astype(np.float32) / 255
    eight = pp.clahe(image, clip_limit, tile_grid, bit_depth=8)
    sixteen = pp.clahe(image, clip_limit, tile_grid, bit_depth=16)
    assert np.abs(eight - sixteen).max() <= 1.0 / 255 + 1e-5


def test_median_removes_salt_and_pepper_noise(radiograph):
    rng = np.random.default_rng(0)
    noisy = radiograph.copy()
    speckled = rng.random(noisy.shape) < 0.05
    noisy[speckled] = rng.integers(0, 2, speckled.sum()).astype(np.float32)  # black or white specks

    def wrong(image):  # fraction of pixels far from the clean radiograph
        return float((np.abs(image - radiograph) > 0.15).mean())

    assert wrong(noisy) > 0.02
    assert wrong(pp.median_filter(noisy, kernel_size=3)) < 0.1 * wrong(noisy)


def test_unsharp_mask_adds_detail_and_zero_amount_is_identity(radiograph):
    sharpened = pp.unsharp_mask(radiograph, amount=1.5, radius=1.5)
    assert local_contrast(sharpened, 3) > 1.3 * local_contrast(radiograph, 3)
    np.testing.assert_allclose(pp.unsharp_mask(radiograph, amount=0.0), radiograph, atol=1e-6)


def test_full_histogram_equalisation_flattens_the_histogram_and_strength_blends(radiograph):
    equalised = pp.equalize_histogram(radiograph, strength=1.0)
    counts, _ = np.histogram(equalised, bins=8, range=(0, 1))
    assert counts.max() < 2.0 * counts.mean()
    half = pp.equalize_histogram(radiograph, strength=0.5)
    np.testing.assert_allclose(half, 0.5 * radiograph + 0.5 * equalised, atol=1.5 / 255)
    np.testing.assert_allclose(pp.equalize_histogram(radiograph, strength=0.0), radiograph, atol=0.5 / 255 + 1e-6)


def test_vignette_darkens_corners_by_the_amount_and_keeps_the_centre():
    out = pp.vignette(np.ones((201, 301), np.float32), amount=0.3)
    assert out[100, 150] == pytest.approx(1.0, abs=1e-4)
    assert out[0, 0] == pytest.approx(0.7, abs=0.01)
    assert out[0, 0] < out[0, 150] < out[100, 150]


def test_gamma_below_one_brightens_mid_greys_and_keeps_black_and_white():
    image = np.array([[0.0, 0.25, 1.0]], np.float32)
    np.testing.assert_allclose(pp.adjust_gamma(image, 0.5), [[0.0, 0.5, 1.0]], atol=1e-6)


@pytest.mark.parametrize("method", ["bilateral", "nl_means"])
def test_denoise_reduces_gaussian_noise(radiograph, method):
    rng = np.random.default_rng(3)
    noisy = np.clip(radiograph + rng.normal(0, 0.05, radiograph.shape), 0, 1).astype(np.float32)
    cleaned = pp.denoise(noisy, method=method, noise_sigma=0.05)
    assert np.abs(cleaned - radiograph).mean() < 0.8 * np.abs(noisy - radiograph).mean()


@pytest.mark.parametrize(
    "call",
    [
        lambda x: pp.apply_window(x, 0.5, 0.0),
        lambda x: pp.median_filter(x, 4),
        lambda x: pp.clahe(x, clip_limit=0),
        lambda x: pp.unsharp_mask(x, radius=0),
        lambda x: pp.equalize_histogram(x, strength=1.5),
        lambda x: pp.vignette(x, 1.0),
        lambda x: pp.denoise(x, method="wiener"),
        lambda x: pp.adjust_gamma(x, 0),
        lambda x: pp.clahe(x, bit_depth=12),
    ],
    ids=["window", "median", "clahe", "unsharp", "equalize", "vignette", "denoise", "gamma", "bit_depth"],
)
def test_operations_refuse_meaningless_parameters(call):
    with pytest.raises(ValueError):
        call(np.full((8, 8), 0.5, np.float32))


# --------------------------------------------------------------------------------------------------
# The boundary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[0.1, np.nan]], np.float32), "NaN or infinite"),
        (np.array([[0.1, np.inf]]), "NaN or infinite"),
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((10, 64, 64), np.uint8), "3-D volume"),
        (np.zeros((2, 4, 4, 3), np.uint8), "expected a 2-D image"),
        (np.zeros(16, np.uint8), "expected a 2-D image"),
        (np.zeros((4, 4), np.int32), "unsupported dtype"),
        (np.zeros((4, 4), bool), "unsupported dtype"),
        (np.full((4, 4), 255.0), r"values in \[0, 1\]"),
        (np.full((4, 4), -0.5, np.float32), r"values in \[0, 1\]"),
    ],
    ids=["nan", "inf", "empty", "volume", "4-d", "1-d", "int32", "bool", "float-0-255", "negative"],
)
def test_invalid_inputs_get_a_clear_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        pp.validate_image(bad)
    with pytest.raises(ValueError, match=message):
        pp.apply_preset(bad, "Balanced")


def test_colour_images_become_grey_and_alpha_is_ignored():
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)], axis=2)
    expected = grey / 255.0
    np.testing.assert_allclose(pp.validate_image(rgb).pixels, expected, atol=1e-6)
    np.testing.assert_allclose(pp.validate_image(rgba).pixels, expected, atol=1e-6)
    np.testing.assert_allclose(pp.validate_image(grey[..., None]).pixels, expected, atol=1e-6)


def test_bit_depth_follows_the_content(radiograph):
    assert pp.validate_image(np.zeros((4, 4), np.uint8)).bit_depth == 8
    assert pp.validate_image(radiograph).bit_depth == 8
    widened = (np.round(radiograph * 255).astype(np.uint16) * 257)  # 8-bit data saved as 16-bit
    assert pp.validate_image(widened).bit_depth == 8
    assert pp.validate_image(dense_uint16(radiograph)).bit_depth == 16


def test_sixteen_bit_input_keeps_sixteen_bit_precision_through_the_quantising_steps(radiograph):
    image = dense_uint16(radiograph)
    steps = [("window", {"center": 0.5, "width": 0.8}), ("clahe", {"clip_limit": 2.5}), ("equalize_histogram", {})]
    sixteen = pp.apply_preset(image, steps)
    eight = pp.apply_preset(image, steps, bit_depth=8)
    assert len(np.unique(sixteen)) > 4 * 256
    assert len(np.unique(eight)) <= 256
    # Same picture either way: the precision changes, not the look.
    assert np.abs(sixteen - eight).mean() < 0.05


def test_largest_supported_size_works():
    image = np.random.default_rng(5).integers(0, 256, (4096, 4096), dtype=np.uint8)
    out = pp.apply_preset(image, "Balanced")
    assert out.shape == (4096, 4096) and out.dtype == np.float32


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


def test_builtin_presets_are_none_plus_the_four_from_the_issue():
    assert list(pp.BUILTIN_PRESETS) == ["None", *ISSUE_TABLE]
    assert pp.BUILTIN_PRESETS["None"] == ()


@pytest.mark.parametrize("name", list(ISSUE_TABLE))
def test_builtin_presets_honour_the_issue_table(name):
    center, width, edge, median, clip, grid, vignette_amount, equalize = ISSUE_TABLE[name]
    steps = pp.BUILTIN_PRESETS[name]
    parameters = {operation: dict(params) for operation, params in steps}
    assert parameters["window"] == {"center": center, "width": width}
    assert parameters["unsharp_mask"]["amount"] == edge
    assert parameters["median"] == {"kernel_size": median}
    assert parameters["clahe"] == {"clip_limit": clip, "tile_grid": grid}
    assert parameters["vignette"] == {"amount": vignette_amount}
    assert ("equalize_histogram" in parameters) == equalize
    # Window first (it defines what is displayed), vignette last (nothing may equalise it away).
    assert steps[0][0] == "window" and steps[-1][0] == "vignette"


def test_builtin_presets_cannot_be_changed_by_accident():
    with pytest.raises(TypeError):
        pp.BUILTIN_PRESETS["Balanced"][0][1]["center"] = 0.9
    with pytest.raises(TypeError):
        pp.BUILTIN_PRESETS["Mine"] = ()


@pytest.mark.parametrize(
    "image",
    [
        np.full((5, 7), 200, np.uint8),
        np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7),
        np.linspace(0, 65535, 35).astype(np.uint16).reshape(5, 7),
    ],
    ids=["uint8", "float32", "uint16"],
)
def test_none_preset_is_the_identity_and_returns_a_new_array(image):
    out = pp.apply_preset(image, "None")
    expected = image / np.iinfo(image.dtype).max if image.dtype.kind == "u" else image
    np.testing.assert_allclose(out, expected, atol=1e-7)
    assert out is not image and not np.shares_memory(out, image)


@pytest.mark.parametrize("name", list(pp.BUILTIN_PRESETS))
def test_presets_are_deterministic_and_keep_shape_dtype_and_range(radiograph, name):
    first = pp.apply_preset(radiograph, name)
    second = pp.apply_preset(radiograph.copy(), name)
    np.testing.assert_array_equal(first, second)
    assert first.shape == radiograph.shape and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0


@pytest.mark.parametrize("name", [n for n in pp.BUILTIN_PRESETS if n != "None"])
def test_each_enhancing_preset_raises_contrast_of_the_radiograph(radiograph, name):
    assert local_contrast(pp.apply_preset(radiograph, name)) > 1.2 * local_contrast(radiograph)


def test_apply_preset_never_modifies_its_input(radiograph):
    original = radiograph.copy()
    for name in pp.BUILTIN_PRESETS:
        pp.apply_preset(radiograph, name)
    np.testing.assert_array_equal(radiograph, original)


def test_unknown_builtin_name_is_a_clear_error():
    with pytest.raises(pp.PresetError, match="unknown preset.*Balanced"):
        pp.apply_preset(np.zeros((4, 4), np.uint8), "Balancd")


def test_steps_may_be_pairs_or_json_style_mappings(radiograph):
    pairs = [("window", {"center": 0.5, "width": 0.6}), ("gamma", {"gamma": 0.8})]
    mappings = [{"operation": op, "parameters": params} for op, params in pairs]
    np.testing.assert_array_equal(pp.apply_preset(radiograph, pairs), pp.apply_preset(radiograph, mappings))


def test_compare_presets_returns_outputs_descriptors_and_histograms(radiograph):
    results = pp.compare_presets(radiograph, histogram_bins=32)
    assert [r.name for r in results] == list(pp.BUILTIN_PRESETS)
    for result in results:
        np.testing.assert_array_equal(result.image, pp.apply_preset(radiograph, result.name))
        assert tuple(result.descriptors) == DESCRIPTOR_NAMES
        assert result.histogram_counts.shape == (32,) and result.histogram_counts.sum() == radiograph.size
        assert result.histogram_edges[0] == 0.0 and result.histogram_edges[-1] == 1.0
        assert result.row()["preset"] == result.name
    np.testing.assert_array_equal(results[0].image, radiograph)  # "None" shows the input


def test_compare_presets_accepts_names_and_custom_presets(radiograph):
    custom = [("gamma", {"gamma": 0.7})]
    results = pp.compare_presets(radiograph, {"Original": "None", "Lifted": custom})
    assert [r.name for r in results] == ["Original", "Lifted"]
    assert results[1].descriptors["mean"] > results[0].descriptors["mean"]
    assert [r.name for r in pp.compare_presets(radiograph, ["Sharp Detail"])] == ["Sharp Detail"]


def test_comparison_grid_has_one_labelled_panel_per_image(radiograph):
    images = {r.name: r.image for r in pp.compare_presets(radiograph)}
    grid = pp.comparison_grid(images)
    height, width = radiograph.shape
    assert grid.dtype == np.uint8
    assert grid.shape[1] > 5 * width and grid.shape[0] > height  # five panels in a row, label band on top
    band = grid.shape[0] - height
    np.testing.assert_array_equal(grid[band:, :width], pp._to_uint(radiograph, 8))  # first panel untouched
    assert grid[:band, :width].max() == 255  # a label is drawn in white


# --------------------------------------------------------------------------------------------------
# Preset files
# --------------------------------------------------------------------------------------------------


def test_preset_json_round_trip(tmp_path, radiograph):
    mine = [("denoise", {"method": "nl_means", "noise_sigma": 0.03}), ("clahe", {"clip_limit": 1.5, "tile_grid": (4, 6)})]
    presets = {**pp.BUILTIN_PRESETS, "Mine": mine}
    path = tmp_path / "presets.json"
    pp.save_presets(presets, path)
    loaded = pp.load_presets(path)
    assert list(loaded) == list(presets)
    assert json.loads(path.read_text())["presets"]["Mine"] == pp.preset_to_json(mine)
    for name, steps in presets.items():
        assert loaded[name] == pp.validate_preset(steps)
    np.testing.assert_array_equal(pp.apply_preset(radiograph, loaded["Mine"]), pp.apply_preset(radiograph, mine))
    assert [p.name for p in tmp_path.iterdir()] == ["presets.json"]  # no temporary file left behind


def test_saving_an_invalid_preset_leaves_the_existing_file_untouched(tmp_path):
    path = tmp_path / "presets.json"
    pp.save_presets({"Mine": [("gamma", {"gamma": 0.8})]}, path)
    before = path.read_bytes()
    with pytest.raises(pp.PresetError, match="gamma"):
        pp.save_presets({"Mine": [("gamma", {"gamma": -1})]}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["presets.json"]


def _steps(*steps):
    return {"presets": {"Mine": list(steps)}}


@pytest.mark.parametrize(
    "document, field, message",
    [
        (_steps({"operation": "sharpen"}), "presets['Mine'][0].operation", "unknown operation 'sharpen'"),
        (_steps({"operation": "window"}, {"operation": "clahe", "parameters": {"clip": 2}}),
         "presets['Mine'][1].parameters.clip", "unknown parameter"),
        (_steps({"operation": "clahe", "parameters": {"clip_limit": 500}}),
         "presets['Mine'][0].parameters.clip_limit", "between"),
        (_steps({"operation": "median", "parameters": {"kernel_size": "3"}}),
         "presets['Mine'][0].parameters.kernel_size", "expected an odd integer, got str"),
        (_steps({"operation": "median", "parameters": {"kernel_size": 4}}),
         "presets['Mine'][0].parameters.kernel_size", "odd integer"),
        (_steps({"operation": "window", "parameters": {"center": True}}),
         "presets['Mine'][0].parameters.center", "expected a number, got bool"),
        (_steps({"operation": "clahe", "parameters": {"tile_grid": [8]}}),
         "presets['Mine'][0].parameters.tile_grid", "rows, columns"),
        (_steps({"operation": "clahe", "parameters": {"bit_depth": 16}}),
         "presets['Mine'][0].parameters.bit_depth", "follows the input image"),
        (_steps({"operation": "denoise", "parameters": {"method": "wiener"}}),
         "presets['Mine'][0].parameters.method", "expected one of"),
        (_steps({"operation": "gamma", "params": {}}), "presets['Mine'][0].params", "unknown key"),
        ({"presets": {"Mine": {"operation": "window"}}}, "presets['Mine']", "list of steps"),
        ({"presets": []}, "presets", "object mapping preset names"),
        ({"presetz": {}}, "presetz", "unknown key"),
        ({"version": 2, "presets": {}}, "version", "reads version 1"),
    ],
    ids=[
        "unknown-operation", "bad-parameter-name", "out-of-range", "wrong-type", "even-kernel", "bool-as-number",
        "grid-shape", "bit-depth", "bad-choice", "bad-step-key", "steps-not-list", "presets-not-object",
        "unknown-top-key", "version",
    ],
)
def test_invalid_preset_files_name_the_bad_field(tmp_path, document, field, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message) as caught:
        pp.load_presets(path)
    assert isinstance(caught.value, pp.PresetError)
    assert caught.value.field == f"mine.json: {field}"
    assert str(caught.value).startswith(f"mine.json: {field}: ")


def test_a_file_that_is_not_json_says_so(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"presets": {')
    with pytest.raises(pp.PresetError, match="not valid JSON.*line 1"):
        pp.load_presets(path)


# --------------------------------------------------------------------------------------------------
# Properties over random inputs and parameters
# --------------------------------------------------------------------------------------------------


@st.composite
def input_images(draw):
    """Random small images in every accepted form, with random value ranges (including flat ones)."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]))
    if np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max
        low = draw(st.integers(0, top))
        elements = st.integers(low, draw(st.integers(low, top)))
    else:
        width = 32 if dtype == np.float32 else 64
        low = draw(st.floats(0, 1, width=width))
        elements = st.floats(low, draw(st.floats(low, 1, width=width)), width=width)
    return draw(arrays(dtype, shape, elements=elements))


def _values_for(spec):
    """A strategy over the accepted values of one parameter spec in OPERATIONS."""
    if hasattr(spec, "choices"):
        return st.sampled_from(spec.choices)
    if not hasattr(spec, "integer"):  # tile grid
        side = st.integers(spec.low, spec.high)
        return st.tuples(side, side)
    if spec.odd:
        return st.integers(0, (spec.high - 1) // 2).map(lambda k: 2 * k + 1)
    if spec.integer:
        return st.integers(spec.low, spec.high)
    return st.floats(spec.low, spec.high)


@st.composite
def valid_steps(draw):
    name = draw(st.sampled_from(sorted(pp.OPERATIONS)))
    specs = pp.OPERATIONS[name].parameters
    chosen = draw(st.lists(st.sampled_from(sorted(specs)), unique=True))
    return name, {key: draw(_values_for(specs[key])) for key in chosen}


def _assert_valid_output(out, shape):
    assert out.shape == shape[:2] and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@PROPERTY_SETTINGS
@given(image=input_images())
def test_every_builtin_preset_gives_a_valid_image_for_any_accepted_input(image):
    original = image.copy()
    for name in pp.BUILTIN_PRESETS:
        _assert_valid_output(pp.apply_preset(image, name), image.shape)
    np.testing.assert_array_equal(image, original)


@PROPERTY_SETTINGS
@given(image=input_images(), steps=st.lists(valid_steps(), min_size=1, max_size=4), bit_depth=st.sampled_from([None, 8, 16]))
def test_any_valid_parameters_give_a_valid_image(image, steps, bit_depth):
    _assert_valid_output(pp.apply_preset(image, steps, bit_depth=bit_depth), image.shape)


@st.composite
def out_of_range_parameters(draw):
    candidates = [
        (name, key, spec)
        for name, operation in pp.OPERATIONS.items()
        for key, spec in operation.parameters.items()
        if hasattr(spec, "integer") and not spec.integer
    ]
    name, key, spec = draw(st.sampled_from(candidates))
    value = draw(
        st.one_of(
            st.floats(max_value=spec.low, exclude_max=True, allow_nan=False),
            st.floats(min_value=spec.high, exclude_min=True, allow_nan=False),
            st.just(math.nan),
        )
    )
    return name, key, value


@PROPERTY_SETTINGS
@given(bad=out_of_range_parameters(), position=st.integers(0, 3))
def test_out_of_range_parameters_are_refused_naming_the_parameter(bad, position):
    name, key, value = bad
    steps = [("gamma", {"gamma": 1.0})] * position + [(name, {key: value})]
    with pytest.raises(pp.PresetError) as caught:
        pp.validate_preset(steps, "Mine")
    assert caught.value.field == f"Mine[{position}].parameters.{key}"


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture()
def png8(tmp_path, radiograph) -> Path:
    path = tmp_path / "in8.png"
    Image.fromarray(pp._to_uint(radiograph, 8)).save(path)
    return path


def test_cli_applies_one_preset_keeping_8_bit(png8, tmp_path, radiograph):
    out = tmp_path / "out.png"
    done = _run(png8, "--preset", "High Contrast", "-o", out)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as im:
        assert im.mode == "L"
        written = np.asarray(im)
        provenance = json.loads(im.text["cxr-studio:post-process"])
    assert provenance["preset"] == "High Contrast"
    expected = pp._to_uint(pp.apply_preset(pp._to_uint(radiograph, 8), "High Contrast"), 8)
    np.testing.assert_array_equal(written, expected)


def test_cli_keeps_16_bit_input_16_bit(tmp_path, radiograph):
    source, out = tmp_path / "in16.png", tmp_path / "out16.png"
    Image.fromarray(dense_uint16(radiograph)).save(source)
    done = _run(source, "--preset", "Balanced", "-o", out)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as im:
        assert im.mode.startswith("I;16")
        assert len(np.unique(np.asarray(im))) > 256


def test_cli_all_writes_a_labelled_grid_of_every_preset(png8, tmp_path, radiograph):
    out = tmp_path / "grid.png"
    done = _run(png8, "--all", "-o", out)
    assert done.returncode == 0, done.stderr
    grid = np.asarray(Image.open(out))
    expected = pp.comparison_grid({r.name: r.image for r in pp.compare_presets(pp._to_uint(radiograph, 8))})
    np.testing.assert_array_equal(grid, expected)


def test_cli_saves_a_preset_and_uses_it_from_the_file(png8, tmp_path):
    presets = tmp_path / "mine.json"
    assert _run("--preset", "Sharp Detail", "--save-preset", presets).returncode == 0
    document = json.loads(presets.read_text())
    document["presets"]["Mine"] = document["presets"].pop("Sharp Detail")[:3]
    presets.write_text(json.dumps(document))
    out = tmp_path / "mine.png"
    done = _run(png8, "--preset-file", presets, "--preset", "Mine", "-o", out)
    assert done.returncode == 0, done.stderr
    assert out.is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png"], "not found"),
        (["notes.txt"], "not an image"),
        (["in8.png", "--preset", "Nope"], "unknown preset"),
        (["in8.png", "--preset-file", "bad.json"], "parameters.clip_limit"),
        (["in8.png", "--preset", "Balanced", "--all"], "not allowed with"),
    ],
    ids=["missing-file", "not-an-image", "unknown-preset", "bad-preset-file", "conflicting-options"],
)
def test_cli_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, png8, args, message):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "bad.json").write_text(json.dumps(_steps({"operation": "clahe", "parameters": {"clip_limit": -1}})))
    done = _run(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_apply_presets_side_by_side_equals_one_at_a_time(radiograph):
    names = ["Sharp Detail", "Balanced", "Radiographic Film", "High Contrast"]
    together = pp.apply_presets(radiograph, names)
    assert list(together) == names  # the order given, although two run at once
    for name in names:
        np.testing.assert_array_equal(together[name], pp.apply_preset(radiograph, name))
    with pytest.raises(pp.PresetError):
        pp.apply_presets(radiograph, ["Balanced", "No Such Preset"])
