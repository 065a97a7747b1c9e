"""Writes the crafted bad inputs of tests/corpus/ (committed; rerun only to change them).

    .venv/bin/python tests/corpus/make_corpus.py

Each file is small; what it does to a reader is in its name and in CASES of
tests/test_fuzz.py. Classifier checkpoints use a tiny architecture so that the
files stay a few hundred kB at most.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import struct
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def png_bomb(width: int = 16_000, height: int = 16_000) -> bytes:
    """A 1-bit PNG of width x height black pixels: 32 MB of scanlines that deflate to about 30 kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((width + 7) // 8)  # filter byte 0, then the packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gzip_bomb(promised_images: int = 10, real_bytes: int = 50 << 20) -> bytes:
    """A gzip IDX whose header promises 10 images and whose content decompresses to 50 MB."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(idx(0x803, (promised_images, 28, 28), b""))
        block = bytes(1 << 20)
        for _ in range(real_bytes >> 20):
            f.write(block)
    return out.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


class RunsCode:
    """Pickled as a call of builtins.print: harmless, but a global a safe loader must refuse."""

    def __reduce__(self):
        return (print, ("this checkpoint ran code while loading",))


def classifier_checkpoint(**change) -> dict:
    from vqlib.classify import build_classifier
    from vqlib.config import ClassifierConfig, VQVAEConfig
    from vqlib.models import VQVAE

    vqvae_config = VQVAEConfig(
        num_embeddings=4, embedding_dim=2, hidden_channels=2, residual_channels=1, num_residual_blocks=0
    )
    config = ClassifierConfig(conv_channels=2, hidden_units=4)
    torch.manual_seed(0)
    model = build_classifier(config, VQVAE(vqvae_config))
    ckpt = {
        "kind": "classifier",
        "format_version": 1,
        "model_config": dataclasses.asdict(config),
        "vqvae_config": dataclasses.asdict(vqvae_config),
        "vqvae_checkpoint": "missing/best.pt",
        "state_dict": model.state_dict(),
    }
    for key, value in change.items():
        if callable(value):
            value(ckpt)
        else:
            ckpt[key] = value
    return ckpt


def save(name: str, obj) -> None:
    torch.save(obj, HERE / name)


def main() -> None:
    w = lambda name, data: (HERE / name).write_bytes(data)  # noqa: E731
    w("bomb_16000x16000.png", png_bomb())
    image = (bytes(range(256)) * 4)[:784]
    ten = idx(0x803, (10, 28, 28), image * 10)
    w("truncated-idx3-ubyte.gz", gz(ten)[:-40])
    w("truncated-content-idx3-ubyte.gz", gz(ten[:-100]))
    w("promises-1e9-images-idx3-ubyte", idx(0x803, (10**9, 28, 28), image))
    w("promises-1e9-images-idx3-ubyte.gz", gz(idx(0x803, (10**9, 28, 28), image)))
    w("promises-4e9-pixels-each-idx3-ubyte.gz", gz(idx(0x803, (1, 65536, 65536), image)))
    w("zero-pixel-images-idx3-ubyte.gz", gz(idx(0x803, (10**9, 0, 0), b"")))
    w("no-images-idx3-ubyte.gz", gz(idx(0x803, (0, 28, 28), b"")))
    w("wrong-magic-idx3-ubyte.gz", gz(idx(0x804, (1, 28, 28), image)))
    w("float32-idx3-ubyte.gz", gz(idx(0xD03, (1, 28, 28), bytes(4 * 784))))
    w("labels-not-images-idx1-ubyte.gz", gz(idx(0x801, (3,), b"\x01\x02\x03")))
    w("header-only-idx3-ubyte", struct.pack(">II", 0x803, 5))
    w("gzip-bomb-idx3-ubyte.gz", gzip_bomb())
    w("not-gzip.gz", b"this is not gzip at all")
    w("gzip-then-garbage-idx3-ubyte.gz", gz(ten) + b"garbage after the stream")
    w("empty.png", b"")
    w("text.png", b"a text file with a .png name\n")
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    w("truncated.png", buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "JPEG")
    w("truncated.jpg", buffer.getvalue()[:300])
    w("png-header-only.png", png_bomb(10, 10)[:33])

    # the project's own result files
    w("list.json", b"[1, 2, 3]\n")
    w("corrupt.json", b'{"status": "success", "val_mse": 0.01')
    w("nested.json", b"[" * 5000 + b"]" * 5000)
    w("latin1.json", '{"status": "succès"}'.encode("latin-1"))
    w("wrong-types-metrics.json", json.dumps({"status": "success", "val_mse": "low", "code": 5, "history": 3}).encode())
    w("best-without-checkpoint.json", json.dumps({"num_embeddings": 100}).encode())

    # checkpoints: for `vqlib infer-cls --checkpoint`
    save("code-running-global.pt", {"kind": "classifier", "payload": RunsCode()})
    w("random-bytes.pt", bytes(range(256)) * 8)
    save("tiny-classifier.pt", classifier_checkpoint())
    good = io.BytesIO()
    torch.save(classifier_checkpoint(), good)
    w("truncated.pt", good.getvalue()[: len(good.getvalue()) // 2])
    save("list.pt", [1, 2, 3])
    save("wrong-kind.pt", classifier_checkpoint(kind="vqvae"))

    def reshape(ckpt):
        ckpt["state_dict"]["head.classifier.5.weight"] = torch.zeros(3, 3)

    save("wrong-shape-state-dict.pt", classifier_checkpoint(_=reshape))

    def integers(ckpt):
        ckpt["state_dict"] = {k: v.to(torch.int64) for k, v in ckpt["state_dict"].items()}

    save("integer-weights.pt", classifier_checkpoint(_=integers))

    def nan(ckpt):
        ckpt["state_dict"]["head.classifier.5.weight"].fill_(float("nan"))

    save("nan-weights.pt", classifier_checkpoint(_=nan))

    def strings(ckpt):
        ckpt["state_dict"]["head.classifier.5.weight"] = "weights"

    save("string-in-state-dict.pt", classifier_checkpoint(_=strings))
    save("state-dict-is-a-list.pt", classifier_checkpoint(state_dict=[1, 2]))
    save("config-wrong-types.pt", classifier_checkpoint(vqvae_config={"num_embeddings": 4, "beta": "high"}))
    save("config-is-a-list.pt", classifier_checkpoint(model_config=[1, 2]))
    save(
        "config-absurd-size.pt",
        classifier_checkpoint(vqvae_config={"num_embeddings": 65536, "embedding_dim": 10**7, "hidden_channels": 2**30}),
    )
    save("format-version-string.pt", classifier_checkpoint(format_version="one"))


if __name__ == "__main__":
    main()
