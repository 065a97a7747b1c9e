"""How well the out-of-distribution detector separates FashionMNIST from images it never saw (`vqlib ood-eval`).

The evaluation sets are made at run time from what installed packages ship (no
download), and none of them took part in any choice of the detector
(vqlib.ood; docs/robustness.md says where each choice was made):

- FashionMNIST test: the 10,000 in-distribution images every AUROC is measured against;
- FashionMNIST test as product photos: 1,000 test images rendered dark on a light
  background at 10x, JPEG-compressed, and brought back through the photo path: the
  false-positive rate of `vqlib infer-cls` on photos;
- digits: scikit-learn's 1,797 handwritten digits scaled as MNIST is (20 x 20 in 28 x 28);
- glyphs: the letters and digits of 21 fonts that matplotlib ships, printed on a card;
- photo crops: random crops of scikit-learn's two sample photos and matplotlib's portrait of Grace Hopper;
- text pages: pages of Python's own documentation set in those fonts;
- uniform noise, blank, and the inverted test set: 28 x 28 images, as before.

Glyphs, crops and pages go through the photo path (`vqlib.photos.prepare_photo`),
as a user's file would. Beside the detector, the baselines: reconstruction error,
class-conditional Mahalanobis distance of the code (Lee et al. 2018), the raw prior
likelihood, and Serra et al. 2020's complexity-corrected likelihood.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .data import IMAGE_SIZE, NUM_CLASSES, FashionMNIST, subset, to_float
from .ood import Detector
from .photos import PreparedPhoto, photo_problem, prepare_photo

PCA_DIMS = 50  # the Mahalanobis baseline: PCA to 50, shared covariance (as first measured)
FIT_IMAGES = 10_000  # training images the Mahalanobis baseline is fitted on (stratified)
PHOTO_CROPS_PER_PHOTO = 150
PRODUCT_PHOTOS = 1_000
TEXT_PAGES = 24
# The fonts matplotlib ships that draw Latin letters and digits (its symbol-only fonts are left out).
GLYPH_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
)
GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
IN_DISTRIBUTION = "FashionMNIST test"


# ----------------------------------------------------------------------------- images from installed packages


def synthetic_images(kind: str, source: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Uniform noise, blank (all black, as a blank photo becomes), or the `source` images inverted: (n, 28, 28) uint8."""
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    if kind == "blank":
        return torch.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    if kind == "inverted":
        return 255 - source[:n]
    raise ValueError(f"unknown synthetic set {kind!r}")


def digits_images() -> torch.Tensor:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16) made MNIST-like: 0..255, 20x20, padded to 28x28."""
    from PIL import Image
    from sklearn.datasets import load_digits

    small = (load_digits().images * (255.0 / 16.0)).round().astype(np.uint8)
    pad = (IMAGE_SIZE - 20) // 2
    out = np.zeros((len(small), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, image in enumerate(small):
        out[i, pad : pad + 20, pad : pad + 20] = np.asarray(
            Image.fromarray(image).resize((20, 20), Image.Resampling.BILINEAR)
        )
    return torch.from_numpy(out)


def sample_photos() -> dict:
    """The photos installed packages ship, as Pillow images: scikit-learn's two sample photos (a temple among
    trees, a flower) and matplotlib's portrait of Grace Hopper."""
    import matplotlib.cbook
    from PIL import Image
    from sklearn.datasets import load_sample_image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as face:
        face.load()
        portrait = face.convert("RGB")
    return {
        "landscape (scikit-learn china.jpg)": Image.fromarray(load_sample_image("china.jpg")),
        "flower (scikit-learn flower.jpg)": Image.fromarray(load_sample_image("flower.jpg")),
        "face (matplotlib grace_hopper.jpg)": portrait,
    }


def photo_crops(per_photo: int = PHOTO_CROPS_PER_PHOTO, seed: int = 0) -> list:
    """Random crops of `sample_photos`: side 1/4 to all of the shorter side, aspect 3:4 to 4:3, anywhere."""
    rng = np.random.default_rng(seed)
    crops = []
    for photo in sample_photos().values():
        width, height = photo.size
        for _ in range(per_photo):
            side = rng.uniform(0.25, 1.0) * min(width, height)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = min(width, round(side * aspect)), min(height, round(side / aspect))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            crops.append(photo.crop((left, top, left + w, top + h)))
    return crops


def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(f"{matplotlib.get_data_path()}/fonts/ttf/{name}", size)


def glyph_cards(fonts=GLYPH_FONTS, glyphs: str = GLYPHS) -> list:
    """Each glyph of each font printed black on a white 160 x 160 card, as a photo of a printed character."""
    from PIL import Image, ImageDraw

    cards = []
    for name in fonts:
        font = _font(name, 110)
        for glyph in glyphs:
            card = Image.new("L", (160, 160), 255)
            draw = ImageDraw.Draw(card)
            left, top, right, bottom = draw.textbbox((0, 0), glyph, font=font)
            draw.text(((160 - right - left) / 2, (160 - bottom - top) / 2), glyph, fill=0, font=font)
            if np.asarray(card).min() < 128:  # a glyph the font does not draw leaves the card blank
                cards.append(card)
    return cards


def text_pages(n: int = TEXT_PAGES, seed: int = 0) -> list:
    """Pages of Python's documentation (pydoc_data, part of the standard library) set black on white paper:
    portrait or landscape, 14-22 px type, one of four fonts, with margins."""
    from pydoc_data.topics import topics

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    texts = [topics[key] for key in sorted(topics)]
    fonts = ("DejaVuSerif.ttf", "DejaVuSans.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf")
    pages = []
    for i in range(n):
        width, height = (850, 1100) if i % 3 else (1100, 850)
        size, margin = int(rng.integers(14, 23)), int(rng.integers(50, 101))
        font = _font(fonts[i % len(fonts)], size)
        page = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(page)
        columns = max(20, int((width - 2 * margin) / font.getlength("n")))
        lines = [
            line
            for paragraph in texts[(i * 7) % len(texts)].splitlines() + texts[(i * 7 + 1) % len(texts)].splitlines()
            for line in (textwrap.wrap(paragraph, columns) or [""])
        ]
        y = margin
        for line in lines:
            if y + size > height - margin:
                break
            draw.text((margin, y), line, fill=0, font=font)
            y += round(size * 1.4)
        pages.append(page)
    return pages


def product_photos(images: torch.Tensor, seed: int = 0) -> list:
    """FashionMNIST images rendered as product photos: dark on FashionMNIST's light grey (#fdfdfd, Xiao et al.
    2017), 10x larger (bicubic), a margin of 10-25% of the side, sensor noise (2 grey levels), JPEG at quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for image in images.numpy():
        light = 253.0 - image.astype(np.float32) * (253.0 / 255.0)
        big = np.asarray(
            Image.fromarray(light).resize((IMAGE_SIZE * 10, IMAGE_SIZE * 10), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        pad = int(rng.uniform(0.10, 0.25) * big.shape[0])
        canvas = np.full((big.shape[0] + 2 * pad, big.shape[1] + 2 * pad), 253.0, dtype=np.float32)
        canvas[pad : pad + big.shape[0], pad : pad + big.shape[1]] = big
        canvas += rng.normal(0.0, 2.0, canvas.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8)).convert("RGB").save(
            buffer, format="JPEG", quality=90
        )
        buffer.seek(0)
        with Image.open(buffer) as jpeg:
            jpeg.load()
            photos.append(jpeg.copy())
    return photos


def through_photo_path(photos: list) -> tuple[torch.Tensor, list[PreparedPhoto]]:
    """Pillow images -> what `vqlib infer-cls` makes of them: uint8 (N, 28, 28) and each photo's checks."""
    prepared = [prepare_photo(photo) for photo in photos]
    return torch.from_numpy(np.stack([p.image for p in prepared])), prepared


@dataclass
class EvalSet:
    name: str
    images: torch.Tensor  # uint8 (N, 28, 28): what the classifier sees
    photos: Optional[list[PreparedPhoto]]  # the photo path's checks, for sets made from photos
    inlier: bool = False


def evaluation_sets(data: FashionMNIST, *, limit: Optional[int] = None, seed: int = 1) -> list[EvalSet]:
    """Every set of the evaluation; `limit` caps the size of each (for quick checks; the published table has none)."""
    cap = (lambda n: n) if limit is None else (lambda n: min(n, limit))  # noqa: E731
    test = data.test_images[: cap(len(data.test_images))]
    crops_per_photo = cap(3 * PHOTO_CROPS_PER_PHOTO) // 3 or 1
    return [
        EvalSet(IN_DISTRIBUTION, test, None, inlier=True),
        EvalSet(
            "FashionMNIST test as product photos",
            *through_photo_path(product_photos(data.test_images[: cap(PRODUCT_PHOTOS)], seed)),
            inlier=True,
        ),
        EvalSet("digits (scikit-learn, MNIST-like)", digits_images()[: cap(1797)], None),
        EvalSet("glyphs (matplotlib's fonts, printed)", *_capped(through_photo_path(glyph_cards()), cap)),
        EvalSet("photo crops (scikit-learn, matplotlib)", *through_photo_path(photo_crops(crops_per_photo, seed))),
        EvalSet("text pages (Python's documentation)", *through_photo_path(text_pages(cap(TEXT_PAGES), seed))),
        EvalSet("uniform noise", synthetic_images("noise", test, cap(10_000), seed), None),
        EvalSet("blank", synthetic_images("blank", test, cap(1_000)), None),
        EvalSet("inverted FashionMNIST test", synthetic_images("inverted", test, cap(10_000)), None),
    ]


def _capped(pair, cap):
    images, photos = pair
    n = cap(len(images))
    if n < len(images):  # an even spread over fonts and glyphs, not the first font's glyphs only
        keep = np.linspace(0, len(images) - 1, n).round().astype(int)
        return images[keep], [photos[i] for i in keep]
    return images, photos


# ----------------------------------------------------------------------------- baselines


@torch.inference_mode()
def encode_for_ood(vqvae, images: torch.Tensor, *, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction MSE per image, flattened quantized code (N, D*144))."""
    device = next(vqvae.parameters()).device
    vqvae.eval()
    mse, flat = [], []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        out = vqvae(x)
        mse.append((out.reconstruction - x).pow(2).mean(dim=(1, 2, 3)).float().cpu())
        flat.append(out.vq.quantized.flatten(1).float().cpu())
    return torch.cat(mse).numpy(), torch.cat(flat).numpy()


def fit_mahalanobis(vqvae, data: FashionMNIST, *, fit_images: int = FIT_IMAGES, seed: int = 0) -> dict:
    """The Mahalanobis baseline (Lee et al. 2018): PCA of the quantized code to 50 dimensions, class means and one
    shared covariance, fitted on `fit_images` stratified training images."""
    from sklearn.decomposition import PCA

    images, labels = subset(data.train_images, data.train_labels, min(fit_images, len(data.train_labels)), seed)
    _, flat = encode_for_ood(vqvae, images)
    pca = PCA(n_components=min(PCA_DIMS, flat.shape[1], len(flat)), random_state=0).fit(flat)
    z = pca.transform(flat)
    labels = np.asarray(labels)
    means = np.stack([z[labels == c].mean(0) for c in range(NUM_CLASSES)])
    centred = z - means[labels]
    covariance = centred.T @ centred / len(z)
    return {
        "mean": pca.mean_,
        "components": pca.components_,
        "class_means": means,
        "precision": np.linalg.pinv(covariance + 1e-6 * np.eye(len(covariance))),
    }


def png_bits(images: torch.Tensor) -> np.ndarray:
    """Serra et al. 2020's L(x): bits of each uint8 28 x 28 image as a PNG (Pillow, compression level 9)."""
    from PIL import Image

    sizes = []
    for image in images.numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=9)
        sizes.append(8.0 * buffer.tell())
    return np.array(sizes)


def signals(detector: Detector, mahalanobis: dict, images: torch.Tensor, *, progress: bool = False) -> dict:
    """Per image, higher = less like FashionMNIST: the detector's likelihood ratio and the four baselines."""
    bits = detector.bits(images, progress=progress)
    mse, flat = encode_for_ood(detector.models.vqvae, images)
    z = (flat - mahalanobis["mean"]) @ mahalanobis["components"].T
    distances = np.stack(
        [np.einsum("ij,jk,ik->i", z - mu, mahalanobis["precision"], z - mu) for mu in mahalanobis["class_means"]],
        axis=1,
    )
    return {
        "reconstruction_mse": mse,
        "mahalanobis": distances.min(1),
        "prior_bits": bits["prior_bits"],
        "complexity_corrected": bits["prior_bits"] - png_bits(images),
        "detector": bits["likelihood_ratio"],
    }


BASELINES = ("reconstruction_mse", "mahalanobis", "prior_bits", "complexity_corrected")


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """Area under the ROC curve of `outliers` (positives) against `inliers`, higher score = more unusual."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([inliers, outliers])
    truth = np.concatenate([np.zeros(len(inliers)), np.ones(len(outliers))])
    return float(roc_auc_score(truth, scores))


# ----------------------------------------------------------------------------- the table


def evaluate_detector(detector: Detector, data: FashionMNIST, *, limit: Optional[int] = None, progress: bool = False):
    """One row per set: AUROC of each signal against the FashionMNIST test set, and the share flagged.

    `limit` caps each set and the training images the Mahalanobis baseline is fitted on
    (a quick check; the published table has none).

    `flagged_detector`: the share above the detector's threshold (on the test set:
    the false-positive rate); `flagged_photo_checks`: of a photo set, the share whose
    photo fails a premise of the preparation (`vqlib.photos`); `flagged`: either, which
    is what `vqlib infer-cls` flags. `auroc_with_photo_checks` ranks a photo that fails
    a premise above every image.
    """
    import pandas as pd

    from .progress import progress_bar

    fit_images = FIT_IMAGES if limit is None else min(FIT_IMAGES, max(limit, 2 * NUM_CLASSES))
    mahalanobis = fit_mahalanobis(detector.models.vqvae, data, fit_images=fit_images)
    sets = evaluation_sets(data, limit=limit)
    bar = progress_bar(total=len(sets), enabled=progress, desc="evaluation sets", unit="set")
    scored = {}
    for item in sets:
        bar.set_postfix_str(item.name)
        scored[item.name] = signals(detector, mahalanobis, item.images)
        bar.update(1)
    bar.close()
    inliers = scored[IN_DISTRIBUTION]
    rows = []
    for item in sets:
        values = scored[item.name]
        flag = detector.percentile(values["detector"]) > detector.threshold_percentile
        problems = None if item.photos is None else np.array([bool(photo_problem(p)) for p in item.photos])
        row = {"set": item.name, "images": len(item.images), "path": "28 x 28" if item.photos is None else "photo"}
        for name in (*BASELINES, "detector"):
            row[f"auroc_{name}"] = np.nan if item.name == IN_DISTRIBUTION else auroc(inliers[name], values[name])
        # A photo that fails a premise ranks above every image (a finite stand-in for +inf, which sklearn refuses).
        top = max(inliers["detector"].max(), values["detector"].max()) + 1.0
        row["auroc_with_photo_checks"] = (
            np.nan if problems is None else auroc(inliers["detector"], np.where(problems, top, values["detector"]))
        )
        row["flagged_detector"] = float(flag.mean())
        row["flagged_photo_checks"] = np.nan if problems is None else float(problems.mean())
        row["flagged"] = float(flag.mean() if problems is None else (flag | problems).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def photo_table(detector: Detector, photos: Optional[dict] = None):
    """The whole sample photos (and a text page), each as `vqlib infer-cls` judges it: the detector's score of
    its 28 x 28 image, the two premises of the photo path, and the flag."""
    import pandas as pd

    photos = photos if photos is not None else {**sample_photos(), "text page (rendered)": text_pages(1)[0]}
    rows = []
    for name, photo in photos.items():
        prepared = prepare_photo(photo)
        percentile, flag = detector.score(torch.from_numpy(prepared.image[None]))
        problem = photo_problem(prepared)
        rows.append(
            {
                "photo": name,
                "size": f"{photo.size[0]} x {photo.size[1]}",
                "ood_score": float(percentile[0]),
                "flagged_detector": bool(flag[0]),
                "corner_spread": prepared.corner_spread,
                "detail_kept": prepared.detail_kept,
                "photo_problem": problem,
                "flagged": bool(flag[0]) or bool(problem),
            }
        )
    return pd.DataFrame(rows)
