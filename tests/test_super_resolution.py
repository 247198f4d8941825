"""Super-resolution: the embedded photos (split by whole photo, LR the bicubic downscale of HR), the image-folder
data module, Y-channel PSNR/SSIM against independent computations, the nets, and a short run that beats bicubic."""

from __future__ import annotations

import hashlib
import math
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from caer_lightning.data import EmbeddedPhotosDataModule, ImageFolderSRDataModule
from caer_lightning.data.photos import PHOTOS, load_photo, photo_files, split_photos
from caer_lightning.data.sr_pairs import bicubic, downscale
from caer_lightning.models import SuperResolution
from caer_lightning.models.sr_metrics import y_psnr, y_ssim
from caer_lightning.models.sr_nets import ESPCN, FSRCNN


def digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def photos() -> EmbeddedPhotosDataModule:
    data = EmbeddedPhotosDataModule(scale=2, lr_patch_size=16, train_patches=64, batch_size=8)
    data.setup("fit")
    return data


def test_every_bundled_photo_loads_offline_as_rgb():
    for name in PHOTOS:
        images = load_photo(name)
        assert images and all(i.dtype == torch.uint8 and i.shape[0] == 3 and min(i.shape[1:]) >= 300 for i in images)
    assert len(load_photo("motorcycle")) == 2  # the stereo pair: one scene, two files


def test_no_photo_is_on_two_sides(photos):
    names = photos.names
    assert names == {"train": ["rocket", "motorcycle", "flower", "grace_hopper"], "val": ["coffee"],
                     "test": ["astronaut", "chelsea", "china"]}
    assert sorted(n for split in names.values() for n in split) == sorted(PHOTOS)  # each photo exactly once
    files = {split: {f for n in split_names for f in photo_files(n)} for split, split_names in names.items()}
    assert not (files["train"] & files["val"]) and not (files["train"] & files["test"]) and not (files["val"] & files["test"])
    pixels = {split: {digest(p) for p in photos.photos(split)} for split in photos.splits}
    assert not (pixels["train"] & pixels["test"]) and not (pixels["train"] & pixels["val"])
    assert not (pixels["val"] & pixels["test"])


def test_the_test_split_is_the_whole_test_photos(photos):
    for (lr, hr), photo in zip(photos.datasets["test"], photos.photos("test")):
        height, width = photo.shape[-2] // 2 * 2, photo.shape[-1] // 2 * 2
        assert hr.shape == (3, height, width) and lr.shape == (3, height // 2, width // 2)
        assert torch.equal((hr * 255).round().to(torch.uint8), photo[:, :height, :width])


@pytest.mark.parametrize("argument", [dict(val_photos=["coffee"], test_photos=["coffee", "china"]),
                                      dict(val_photos=["nope"], test_photos=["china"]),
                                      dict(val_photos=[], test_photos=["china"]),
                                      dict(val_photos=["coffee"], test_photos=[n for n in PHOTOS if n != "coffee"])])
def test_a_split_that_is_not_one_photo_per_side_is_refused(argument):
    with pytest.raises(ValueError, match="one split|unknown 'nope'; accepted values: one or more of astronaut|"
                                         "empty; accepted|none is left to train on"):
        split_photos(**argument)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_training_lr_is_the_bicubic_downscale_of_its_hr_crop(scale):
    data = EmbeddedPhotosDataModule(scale=scale, lr_patch_size=12, train_patches=24, seed=3)
    data.setup("fit")
    lr, hr = data.datasets["train"].tensors
    assert lr.shape == (24, 3, 12, 12) and hr.shape == (24, 3, 12 * scale, 12 * scale)
    assert torch.equal(lr, (lr * 255).round() / 255), "LR is 8-bit, as a saved image"
    for index in range(len(hr)):  # recomputed independently: PIL's bicubic resize of the 8-bit HR crop
        crop = Image.fromarray((hr[index] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        expected = np.asarray(crop.resize((12, 12), Image.BICUBIC), dtype=np.float64)
        ours = lr[index].permute(1, 2, 0).double().numpy() * 255
        assert np.abs(ours - expected).mean() < 0.5 and 10 * math.log10(255**2 / np.mean((ours - expected) ** 2)) > 45
    assert torch.equal(lr, downscale(hr, scale))


def test_the_crops_are_drawn_from_the_seed(photos):
    again = EmbeddedPhotosDataModule(scale=2, lr_patch_size=16, train_patches=64, batch_size=8)
    again.setup("fit")
    other = EmbeddedPhotosDataModule(scale=2, lr_patch_size=16, train_patches=64, batch_size=8, seed=1)
    other.setup("fit")
    assert torch.equal(again.datasets["train"].tensors[1], photos.datasets["train"].tensors[1])
    assert not torch.equal(other.datasets["train"].tensors[1], photos.datasets["train"].tensors[1])


def found_in(crop: torch.Tensor, photos: list[torch.Tensor]) -> bool:
    """Whether one of the 8 flips/rotations of `crop` is a window of one of `photos` (uint8 tensors)."""
    size = crop.shape[-1]
    for turns in range(4):
        for flipped in (crop, crop.flip(-1)):
            candidate = torch.rot90(flipped, -turns, dims=(-2, -1))
            for photo in photos:
                ys, xs = torch.nonzero((photo == candidate[:, :1, :1]).all(0), as_tuple=True)
                for y, x in zip(ys.tolist(), xs.tolist()):
                    if torch.equal(photo[:, y : y + size, x : x + size], candidate):
                        return True
    return False


@pytest.mark.slow
def test_the_crops_come_from_the_training_photos_only(photos):
    hr = (photos.datasets["train"].tensors[1][:12] * 255).round().to(torch.uint8)
    assert all(found_in(crop, photos.photos("train")) for crop in hr)
    assert not any(found_in(crop, photos.photos("test") + photos.photos("val")) for crop in hr)


def numpy_y_psnr(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """The usual SR evaluation in plain NumPy: 8-bit images, Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255,
    `border` pixels cropped, PSNR with peak 255."""
    def y(image: np.ndarray) -> np.ndarray:
        rgb = np.clip(np.round(image * 255), 0, 255)
        return 16 + (65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2]) / 255

    a, b = y(sr)[border:-border, border:-border], y(hr)[border:-border, border:-border]
    return 10 * math.log10(255**2 / np.mean((a - b) ** 2))


def test_y_psnr_is_the_usual_formula():
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 3, 40, 52, generator=generator)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=generator)).clamp(0, 1)
    sr[0, :, :3] = 1.0  # a damaged border: cropped away for scale 3, counted for scale 2
    for border in (2, 3, 4):
        ours = y_psnr(sr, hr, border)
        assert ours.shape == (3,)
        expected = [numpy_y_psnr(s.double().numpy(), h.double().numpy(), border) for s, h in zip(sr, hr)]
        assert ours.tolist() == pytest.approx(expected, abs=1e-3)
    assert y_psnr(sr, hr, 3)[0] > y_psnr(sr, hr, 2)[0] + 1  # the border crop matters


def test_y_ssim_is_scikit_image_gaussian_ssim_on_y():
    from skimage.metrics import structural_similarity

    generator = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 48, 40, generator=generator)
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=generator)).clamp(0, 1)
    ours = y_ssim(sr, hr, 2)
    for index in range(2):
        def y(image: torch.Tensor) -> np.ndarray:
            rgb = np.clip(np.round(image.double().numpy() * 255), 0, 255)
            return (16 + (65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2]) / 255)[2:-2, 2:-2]

        expected = structural_similarity(y(sr[index]), y(hr[index]), data_range=255, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False)
        assert float(ours[index]) == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize("net", [ESPCN, FSRCNN])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nets_upscale_by_their_scale_with_relu_modules(net, scale):
    model = net(scale)
    assert model(torch.rand(2, 3, 10, 7)).shape == (2, 3, 10 * scale, 7 * scale)
    assert any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert not any(isinstance(m, (torch.nn.PReLU, torch.nn.Tanh)) for m in model.modules())


def test_fsrcnn_has_the_published_size():
    fsrcnn = FSRCNN(3, channels=1)  # FSRCNN(56, 12, 4) on Y: 12,464 weights, as the paper counts them (no biases)
    assert sum(p.numel() for p in fsrcnn.parameters() if p.dim() > 1) == 12_464


def test_residual_starts_near_bicubic():
    torch.manual_seed(0)
    model = SuperResolution(scale=3, residual=True)
    with torch.no_grad():
        for p in model.net.body[-1].parameters():
            p.zero_()
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(model(lr), bicubic(lr, (24, 24)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=5), r"scale=5 is not supported; accepted values: 2, 3, 4"),
    (dict(net="edsr"), r"net='edsr' is not supported; accepted values: espcn, fsrcnn"),
    (dict(scheduler_interval="batch"), r"scheduler_interval='batch'; accepted values: epoch, step"),
])
def test_bad_model_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SuperResolution(**kwargs)


def test_a_scale_the_data_does_not_have_is_named():
    model = SuperResolution(scale=3)
    lr, hr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"the model's scale=3 does not fit the batch: LR \(8, 8\), HR \(16, 16\); "
                                         r"set the model's and the data's scale alike"):
        model.training_step((lr, hr), 0)


def write_images(folder, count: int, size: tuple[int, int], seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{index}.png")


def test_image_folders(tmp_path):
    write_images(tmp_path / "train", 2, (40, 50), 0)
    write_images(tmp_path / "Set5", 3, (33, 35), 1)
    (tmp_path / "Set5" / "notes.txt").write_text("not an image")
    data = ImageFolderSRDataModule(train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "Set5"), scale=3,
                                   lr_patch_size=8, train_patches=10)
    data.setup("fit")
    assert data.datasets["train"].tensors[1].shape == (10, 3, 24, 24)
    assert [tuple(hr.shape) for _, hr in data.datasets["test"]] == [(3, 33, 33)] * 3
    assert len(data.datasets["val"]) == 3  # val_dir unset: the test folder


def test_missing_image_folders_are_named(tmp_path):
    data = ImageFolderSRDataModule(train_dir=str(tmp_path / "DIV2K_train_HR"), test_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"train_dir='.*DIV2K_train_HR': no such folder \(.*\); it should hold "
                                                r"the HR images, files ending in \.png, \.jpg"):
        data.setup("fit")
    write_images(tmp_path / "DIV2K_train_HR", 1, (40, 40), 0)
    (tmp_path / "Set14").mkdir()
    (tmp_path / "Set14" / "readme.md").write_text("")
    data = ImageFolderSRDataModule(train_dir=str(tmp_path / "DIV2K_train_HR"), test_dir=str(tmp_path / "Set14"),
                                   lr_patch_size=8)
    with pytest.raises(FileNotFoundError, match=r"test_dir \(val_dir is not set\)='.*Set14': no image in .*Set14: "
                                                r"looked for files ending in \.png, .*not in sub-folders"):
        data.setup("fit")


@pytest.mark.slow
def test_a_short_run_beats_bicubic_on_the_test_photos(tmp_path):
    import lightning.pytorch as pl

    pl.seed_everything(0)
    data = EmbeddedPhotosDataModule(scale=2, lr_patch_size=24, train_patches=4800, batch_size=16)  # 300 steps
    model = SuperResolution(net="espcn", scale=2, residual=True, optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(model, data)
    (scores,) = trainer.test(model, data, verbose=False)
    assert scores["test_psnr_bicubic"] == pytest.approx(30.44, abs=0.05)  # astronaut, chelsea, china at ×2
    assert scores["test_psnr"] > scores["test_psnr_bicubic"] + 0.5
    assert scores["test_ssim"] > scores["test_ssim_bicubic"]


def test_y_of_a_gray_image_is_the_image_and_other_channel_counts_are_refused():
    from caer_lightning.models.sr_metrics import rgb_to_y

    gray = torch.rand(2, 1, 5, 6)
    assert torch.equal(rgb_to_y(gray), gray)
    rgb = torch.rand(2, 3, 5, 6)  # Y recomputed from BT.601's published coefficients
    r, g, b = rgb.unbind(1)
    expected = (16 + 65.481 * r + 128.553 * g + 24.966 * b) / 255
    torch.testing.assert_close(rgb_to_y(rgb), expected.unsqueeze(1))
    for channels in (2, 4):
        with pytest.raises(ValueError, match=rf"^images with {channels} channels: accepted values: 1 \(Y\) or 3 \(RGB\)$"):
            rgb_to_y(torch.rand(1, channels, 4, 4))


@pytest.mark.parametrize("border", [0, 1, 2])
def test_shave_crops_border_pixels_from_each_side(border):
    from caer_lightning.models.sr_metrics import shave

    image = torch.arange(2 * 3 * 7 * 8, dtype=torch.float32).reshape(2, 3, 7, 8)
    cropped = shave(image, border)
    assert cropped.shape == (2, 3, 7 - 2 * border, 8 - 2 * border)
    assert torch.equal(cropped, image[:, :, border : 7 - border, border : 8 - border])
