"""Calibration data from .npy, .npz and folders of images."""

import numpy as np
import pytest

import spa_keras as spa
from spa_keras.data import load_arrays, load_calibration


def test_npy_and_npz(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 3))
    np.save(tmp_path / "a.npy", x)
    out = load_calibration(str(tmp_path / "a.npy"), (8, 8, 3))
    assert out.dtype == np.float32 and out.shape == (5, 8, 8, 3)
    np.testing.assert_allclose(out, x.astype("float32"))
    assert load_calibration(str(tmp_path / "a.npy"), (None, None, 3), max_samples=2).shape == (2, 8, 8, 3)
    np.save(tmp_path / "one.npy", x[0])
    assert load_calibration(str(tmp_path / "one.npy"), (8, 8, 3)).shape == (1, 8, 8, 3)
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(5))
    xs, ys = load_arrays(str(tmp_path / "b.npz"), (8, 8, 3))
    assert xs.shape == (5, 8, 8, 3) and list(ys) == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "c.npz", x[:3])
    assert load_calibration(str(tmp_path / "c.npz"), (8, 8, 3)).shape == (3, 8, 8, 3)


def test_bad_files_say_what_is_wrong(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4, 3)))
    with pytest.raises(spa.InvalidArgumentError, match="do not fit"):
        load_calibration(str(tmp_path / "a.npy"), (8, 8, 3))
    with pytest.raises(spa.InvalidArgumentError, match="does not exist"):
        load_calibration(str(tmp_path / "missing.npy"), (8, 8, 3))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(spa.InvalidArgumentError, match=".npy or .npz"):
        load_calibration(str(tmp_path / "x.csv"), (2,))
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(spa.InvalidArgumentError, match="could not read"):
        load_calibration(str(tmp_path / "bad.npy"), (2,))
    (tmp_path / "empty").mkdir()
    with pytest.raises(spa.InvalidArgumentError, match="no images"):
        load_calibration(str(tmp_path / "empty"), (8, 8, 3))


def test_image_folder(tmp_path):
    import keras

    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "cats").mkdir(parents=True)
    for i in range(3):
        pixels = rng.integers(0, 255, (20, 12, 3)).astype("uint8")
        keras.utils.save_img(str(tmp_path / "imgs" / "cats" / f"{i}.png"), pixels)
    x = load_calibration(str(tmp_path / "imgs"), (16, 16, 3))
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.float32 and 1 < x.max() <= 255
    assert load_calibration(str(tmp_path / "imgs"), (16, 16, 1), scale=1 / 255).max() <= 1
    assert load_calibration(str(tmp_path / "imgs"), (3, 10, 10)).shape == (3, 3, 10, 10)  # NCHW (ONNX)
    assert load_calibration(str(tmp_path / "imgs"), (None, None, 3)).shape == (3, 20, 12, 3)
