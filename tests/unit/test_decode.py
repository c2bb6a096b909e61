"""One row into the network's input: torchvision's resize and center-crop sizes (padding small
images too), decoding into the batch buffer, and the bad rows a decoder meets."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import bomb_png, jpeg_bytes, png_bytes
from PIL import Image

from sqlinfer.models.declaration import Preprocess
from sqlinfer.worker.decode import BadInput, center_crop, decode_image, read_tensor, resize_size


@pytest.mark.parametrize(("width", "height", "resize", "size"), [
    (640, 480, 256, (341, 256)),  # landscape: the height is the shorter side
    (480, 640, 256, (256, 341)),  # portrait
    (100, 100, 50, (50, 50)),
    (97, 45, 32, (68, 32)),  # int(32 * 97 / 45) = int(68.98): truncated like torchvision
    (64, 48, (20, 30), (30, 20)),  # a pair is (h, w): returned as PIL's (w, h)
])
def test_resize_size(width: int, height: int, resize: int | tuple[int, int], size: tuple[int, int]) -> None:
    assert resize_size(width, height, resize) == size


@pytest.mark.parametrize(("width", "height", "resize"), [(640, 480, 256), (97, 45, 32), (45, 97, 32), (64, 48, 48)])
def test_resize_size_is_torchvisions(width: int, height: int, resize: int) -> None:
    from torchvision.transforms import functional

    image = Image.new("RGB", (width, height))
    assert resize_size(width, height, resize) == functional.resize(image, resize).size


def pattern(width: int, height: int) -> Image.Image:
    """An RGB image whose every pixel is different, so a crop's position shows in its pixels."""
    values = np.arange(width * height * 3, dtype=np.uint32).reshape(height, width, 3) % 251
    return Image.fromarray(values.astype(np.uint8))


@pytest.mark.parametrize(("width", "height", "crop_h", "crop_w"), [
    (10, 8, 4, 4),
    (11, 9, 4, 6),  # odd margins
    (4, 2, 6, 6),  # smaller than the crop both ways: zero padding around it
    (7, 3, 5, 5),  # wider than the crop, shorter than it
    (5, 5, 5, 5),
])
def test_center_crop_is_torchvisions(width: int, height: int, crop_h: int, crop_w: int) -> None:
    from torchvision.transforms import functional

    image = pattern(width, height)
    ours = center_crop(image, crop_h, crop_w)
    assert ours.size == (crop_w, crop_h)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(functional.center_crop(image, [crop_h, crop_w])))


def test_center_crop_pixels_of_a_larger_image() -> None:
    image = pattern(10, 8)
    # top = round((8 - 4) / 2) = 2, left = round((10 - 6) / 2) = 2
    np.testing.assert_array_equal(np.asarray(center_crop(image, 4, 6)), np.asarray(image)[2:6, 2:8])


def test_center_crop_pads_a_small_image_with_zeros() -> None:
    image = pattern(4, 2)
    cropped = np.asarray(center_crop(image, 6, 6))
    expected = np.zeros((6, 6, 3), np.uint8)
    expected[2:4, 1:5] = np.asarray(image)  # offsets ((6 - 2) // 2, (6 - 4) // 2)
    np.testing.assert_array_equal(cropped, expected)


def decode(data: bytes | None, pp: Preprocess, shape: tuple[int, int, int]) -> np.ndarray:
    out = np.full(shape, 7, np.uint8)
    decode_image(data, pp, out)
    return out


def test_decode_resizes_and_crops_like_torchvision_into_the_buffer() -> None:
    from torchvision import transforms

    data = jpeg_bytes(3, 96, 72)
    out = decode(data, Preprocess(resize=36, crop=32), (32, 32, 3))
    pipeline = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32)])
    np.testing.assert_array_equal(out, np.asarray(pipeline(Image.open(io.BytesIO(data)).convert("RGB"))))


def test_decode_into_a_slice_of_a_batch_buffer() -> None:
    batch = np.zeros((3, 16, 24, 3), np.uint8)
    decode_image(png_bytes(1, 48, 32), Preprocess(resize=(16, 24)), batch[1])
    expected = Image.open(io.BytesIO(png_bytes(1, 48, 32))).resize((24, 16), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(batch[1], np.asarray(expected))
    assert not batch[0].any() and not batch[2].any()  # the other rows untouched


def test_decode_grayscale_has_one_channel() -> None:
    out = decode(png_bytes(2, 40, 30), Preprocess(color_mode="L", resize=(8, 8)), (8, 8, 1))
    expected = Image.open(io.BytesIO(png_bytes(2, 40, 30))).convert("L").resize((8, 8), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out[:, :, 0], np.asarray(expected))


def test_decode_pads_an_image_smaller_than_the_crop() -> None:
    out = decode(png_bytes(4, 10, 6), Preprocess(crop=8), (8, 8, 3))
    assert out[0].tolist() == [[0, 0, 0]] * 8  # padding rows above and below the 6 rows of image
    assert out[7].tolist() == [[0, 0, 0]] * 8
    np.testing.assert_array_equal(out[1:7, :, :], np.asarray(Image.open(io.BytesIO(png_bytes(4, 10, 6))))[:, 1:9])


def test_decode_of_a_size_the_buffer_does_not_have_is_a_bad_row() -> None:
    with pytest.raises(BadInput) as info:
        decode(png_bytes(5, 40, 30), Preprocess(resize=20), (20, 20, 3))  # 26x20 after resize, no crop
    assert info.value.kind == "wrong_size"
    assert str(info.value) == "wrong_size: image is 26x20 after preprocessing, expected 20x20"


@pytest.mark.parametrize(("data", "kind", "message"), [
    (None, "empty", "empty: no image bytes"),
    (b"", "empty", "empty: no image bytes"),
    (b"not an image" * 10, "undecodable", "undecodable: UnidentifiedImageError: cannot identify image file"),
    (jpeg_bytes(7, 200, 150)[:400], "undecodable", "undecodable: OSError: Truncated File Read"),
    # Over twice PIL's bomb limit: PIL itself refuses to open it.
    (bomb_png(), "too_large", "too_large: Image size (400000000 pixels) exceeds limit"),
])
def test_bad_bytes_are_bad_rows(data: bytes | None, kind: str, message: str) -> None:
    with pytest.raises(BadInput) as info:
        decode(data, Preprocess(resize=(8, 8)), (8, 8, 3))
    assert info.value.kind == kind
    assert str(info.value).startswith(message)


def test_an_image_over_max_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(BadInput) as info:
        decode(jpeg_bytes(2, 80, 60), Preprocess(resize=(8, 8), max_pixels=4799), (8, 8, 3))
    assert info.value.kind == "too_large"
    assert str(info.value) == "too_large: 80x60 image is over max_pixels=4799"


def test_an_image_at_max_pixels_is_decoded() -> None:
    out = decode(jpeg_bytes(2, 80, 60), Preprocess(resize=(8, 8), max_pixels=4800), (8, 8, 3))
    np.testing.assert_array_equal(out, decode(jpeg_bytes(2, 80, 60), Preprocess(resize=(8, 8)), (8, 8, 3)))


def test_read_tensor_reshapes_a_row() -> None:
    out = np.zeros((2, 3), np.float32)
    read_tensor([1, 2, 3, 4, 5, 6], out)
    assert out.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(("values", "kind"), [(None, "empty"), ([1.0, None, 3.0], "null_element"),
                                              ([1.0, "x", 3.0], "null_element"), ([1.0, 2.0], "wrong_length")])
def test_read_tensor_bad_rows(values: list | None, kind: str) -> None:
    with pytest.raises(BadInput) as info:
        read_tensor(values, np.zeros((1, 3), np.float32))
    assert info.value.kind == kind
