"""Secret keys: a key deterministically derives the K-bit message and every key-seeded pattern.

    key = SecretKey("my secret")              # or SecretKey.from_file("~/.madmark/key")
    msg = key.message(32)                     # (32,) float32 {0, 1}, the same on every run
    seed = key.seed("spread_spectrum/carriers")  # 63-bit int for torch.Generator

Derivation: SHAKE-256 over a length-prefixed encoding of (domain tag, purpose, key), so different
purposes give independent streams and no purpose can be confused with another. The key itself is
never shown: `repr`, `str` and f-strings print only a fingerprint, the first 8 hex digits of
SHA-256(SHA-256(key)), which identifies a key in logs without revealing it.

Pickling is allowed (worker processes need the key) and a pickle does contain the key: do not log
pickles.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import torch

_DOMAIN = b"madmark/watermark/v1"
#: the largest key file :meth:`SecretKey.from_file` reads (1 MiB)
MAX_KEY_FILE_BYTES = 1 << 20


def _encode(*parts: bytes) -> bytes:
    """Unambiguous concatenation: each part prefixed with its 8-byte big-endian length."""
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


class SecretKey:
    """A secret watermark key (text or bytes) that never appears in its own string forms."""

    __slots__ = ("_key",)

    def __init__(self, key: str | bytes):
        if isinstance(key, SecretKey):
            key = key._key
        if isinstance(key, str):
            key = key.encode("utf-8")
        if not isinstance(key, bytes):
            raise TypeError(f"a key must be str or bytes, got {type(key).__name__}")
        if len(key) == 0:
            raise ValueError("a key must not be empty")
        self._key = key

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SecretKey":
        """Read a key file; surrounding whitespace (e.g. a trailing newline) is stripped.

        Raises OSError when the file cannot be read, ValueError when it is empty, holds only
        whitespace, or is larger than :data:`MAX_KEY_FILE_BYTES` (not a key: a wrong path)."""
        with open(Path(path).expanduser(), "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)          # a pipe or /dev/zero cannot run on
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ValueError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES // 2**20} MiB, "
                             "too large for a key")
        text = data.strip()
        if not text:
            raise ValueError(f"key file {path} is empty or holds only whitespace")
        return cls(text)

    @classmethod
    def generate(cls, nbytes: int = 32) -> "SecretKey":
        """A fresh random key: `secrets.token_hex(nbytes)` (2 * nbytes hex characters)."""
        return cls(secrets.token_hex(nbytes))

    @classmethod
    def coerce(cls, key: "SecretKey | str | bytes | os.PathLike") -> "SecretKey":
        """Accept a SecretKey, a literal key (str/bytes), a `pathlib.Path`, or "file:<path>"."""
        if isinstance(key, SecretKey):
            return key
        if isinstance(key, os.PathLike):
            return cls.from_file(key)
        if isinstance(key, str) and key.startswith("file:"):
            return cls.from_file(key[len("file:"):])
        return cls(key)

    def to_file(self, path: str | os.PathLike) -> None:
        """Write the key to `path` readable by the owner only (mode 0600)."""
        p = Path(path).expanduser()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self._key + b"\n")

    # ---- derivation ---------------------------------------------------------------------------
    def derive(self, purpose: str, nbytes: int) -> bytes:
        """`nbytes` pseudo-random bytes for `purpose`, a deterministic function of (key, purpose)."""
        return hashlib.shake_256(_encode(_DOMAIN, purpose.encode("utf-8"), self._key)).digest(nbytes)

    def message(self, num_bits: int) -> torch.Tensor:
        """The K-bit message of this key: (K,) float32 in {0, 1}."""
        if num_bits <= 0:
            raise ValueError(f"num_bits must be positive, got {num_bits}")
        raw = self.derive(f"message/{num_bits}", (num_bits + 7) // 8)
        bits = [(byte >> (7 - i)) & 1 for byte in raw for i in range(8)][:num_bits]
        return torch.tensor(bits, dtype=torch.float32)

    def seed(self, purpose: str) -> int:
        """A 63-bit seed for `purpose` (e.g. "spread_spectrum/carriers"), for torch.Generator."""
        return int.from_bytes(self.derive(f"seed/{purpose}", 8), "big") >> 1

    def generator(self, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
        """A torch.Generator on `device` seeded with `seed(purpose)`."""
        return torch.Generator(device=device).manual_seed(self.seed(purpose))

    # ---- identity without disclosure ----------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """First 8 hex digits of SHA-256(SHA-256(key)): safe to log."""
        return hashlib.sha256(hashlib.sha256(self._key).digest()).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"SecretKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(("SecretKey", self.fingerprint))

    def __getstate__(self):
        return {"_key": self._key}

    def __setstate__(self, state):
        self._key = state["_key"]
