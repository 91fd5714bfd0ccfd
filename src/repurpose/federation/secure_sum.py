"""Secure aggregation of the sites' round answers: the coordinator learns only their sum over >= 3 sites.

Pairwise additive masking (Bonawitz et al. 2017, without the dropout recovery): every pair of sites
(a, b) shares a secret out of band, one file per pair (`pair_secret_path`, 32 random bytes in hex, made
by either site with `write_pair_secret` and handed to the other by their own secure channel; the
coordinator never holds one). For a round, each pair derives the same pseudo-random stream of 64-bit
words from their secret and the SHA-256 of the round file; site a adds it and site b subtracts it. Values
are sent in fixed point (`FRACTION_BITS` binary places) as unsigned 64-bit integers, so all arithmetic is
modulo 2^64 (numpy's uint64 wraps): in the sum over all sites every stream cancels exactly and the
coordinator decodes the exact fixed-point sum of the sites' values. One site's masked answer is its
value plus a sum of uniform words the coordinator cannot compute: uniform on [0, 2^64), independent of
the value. With two sites the sum and one's own answer give the other's, so at least `MIN_SITES` are
required. Every site must answer every round (a missing site leaves its masks in the sum; the round fails).

Numbers: |value| < 2^(63 - FRACTION_BITS) = 2^31 (log-likelihoods of a 10^6-person registry are ~10^5);
rounding error 2^-33 per value and site, so the pooled Newton fit equals the unmasked one to ~1e-10.
`mask_response` / `response_totals` apply this to the response files of `repurpose.federation.distributed`
(per fit: has_events, log-likelihood, score, information, flattened in fit_id order). numpy and polars only.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

FRACTION_BITS = 32
SCALE = float(2**FRACTION_BITS)
LIMIT = float(2 ** (63 - FRACTION_BITS))
MIN_SITES = 3
STREAM_DOMAIN = b"repurpose-secure-sum/1"
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class SecureAggregationError(ValueError):
    """Secure aggregation is misconfigured (too few sites, a missing pair secret) or a value is out of range."""


def pair_secret_path(secrets_dir: str | Path, site: str, peer: str) -> Path:
    """The file of the secret that `site` and `peer` share (the same file name seen from either side)."""
    first, second = sorted((site, peer))
    return Path(secrets_dir) / f"{first}__{second}.key"


def write_pair_secret(secrets_dir: str | Path, site: str, peer: str) -> Path:
    """Make a fresh secret for the pair (256 bits from the OS), to be copied to the peer out of band."""
    path = pair_secret_path(secrets_dir, site, peer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(32) + "\n", encoding="ascii")
    path.chmod(0o600)
    return path


def _secret(secrets_dir: str | Path, site: str, peer: str) -> bytes:
    path = pair_secret_path(secrets_dir, site, peer)
    if not path.is_file():
        raise SecureAggregationError(f"no secret shared with {peer!r}: {path} is missing (exchange it out of band)")
    secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    if len(secret) < 16:
        raise SecureAggregationError(f"{path}: a pair secret must have at least 128 bits")
    return secret


def check_peers(site: str, peers: Sequence[str]) -> list[str]:
    """The sorted federation (this site among them, at least MIN_SITES distinct labels)."""
    members = sorted(set(peers) | {site})
    bad = [p for p in members if not _LABEL.match(p)]
    if bad:
        raise SecureAggregationError(f"site labels must be letters, digits, '_', '.' or '-': {bad}")
    if len(members) < MIN_SITES:
        raise SecureAggregationError(
            f"secure aggregation needs at least {MIN_SITES} sites (got {members}): with two, each site could "
            "subtract its own answer from the sum and read the other's"
        )
    return members


def mask_stream(secret: bytes, round_sha256: str, n: int) -> np.ndarray:
    """n pseudo-random uint64 words, the same for both sites of a pair and one round file."""
    seed = int.from_bytes(hashlib.sha256(STREAM_DOMAIN + secret + round_sha256.encode("ascii")).digest(), "big")
    return np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw(n).astype(np.uint64)


def site_mask(site: str, peers: Sequence[str], secrets_dir: str | Path, round_sha256: str, n: int) -> np.ndarray:
    """This site's mask: + the stream of each pair where it sorts first, - where it sorts second (mod 2^64)."""
    mask = np.zeros(n, dtype=np.uint64)
    for peer in check_peers(site, peers):
        if peer == site:
            continue
        stream = mask_stream(_secret(secrets_dir, site, peer), round_sha256, n)
        mask = mask + stream if site < peer else mask - stream
    return mask


def encode(values: np.ndarray) -> np.ndarray:
    """Fixed point, as uint64 words (two's complement of the rounded value times 2^FRACTION_BITS)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= LIMIT):
        raise SecureAggregationError(f"values must be finite and below {LIMIT:g} in magnitude for fixed point")
    return np.rint(values * SCALE).astype(np.int64).view(np.uint64)


def decode(words: np.ndarray) -> np.ndarray:
    """Floats from fixed-point uint64 words (a sum over sites, masks cancelled)."""
    return np.asarray(words, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE


def masked(values: np.ndarray, site: str, peers: Sequence[str], secrets_dir: str | Path, round_sha256: str) -> np.ndarray:
    """This site's answer as the coordinator receives it: encode(values) + site_mask (mod 2^64)."""
    words = encode(values)
    return words + site_mask(site, peers, secrets_dir, round_sha256, words.size)


def unmasked_sum(answers: Sequence[np.ndarray]) -> np.ndarray:
    """The decoded sum of all sites' masked answers (every site's; otherwise the masks do not cancel)."""
    total = np.zeros_like(np.asarray(answers[0], dtype=np.uint64))
    for answer in answers:
        total = total + np.asarray(answer, dtype=np.uint64)
    return decode(total)


def _flat_values(response: pl.DataFrame) -> tuple[np.ndarray, list[int]]:
    """Per fit (in row order) [has_events, loglik, score..., information...] concatenated; and each fit's length."""
    parts, lengths = [], []
    for has_events, loglik, score, information in response.select("has_events", "loglik", "score", "information").iter_rows():
        row = [float(has_events), float(loglik), *score, *information]
        parts.extend(row)
        lengths.append(len(row))
    return np.asarray(parts, dtype=np.float64), lengths


def mask_response(
    response: pl.DataFrame, site: str, peers: Sequence[str], secrets_dir: str | Path, round_sha256: str
) -> pl.DataFrame:
    """The response (sorted by fit_id) with its values moved into `masked` (uint64 words per fit) and the plain
    columns zeroed; `peers` records the federation the masks were made for. `refused` stays plain: a refusal
    says only that the site's package does not show the fit, which the package itself says."""
    response = response.sort("fit_id")
    values, lengths = _flat_values(response)
    words = masked(values, site, peers, secrets_dir, round_sha256)
    bounds = np.cumsum([0, *lengths])
    per_fit = [words[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return response.with_columns(
        has_events=pl.lit(False),
        loglik=pl.lit(0.0),
        score=pl.col("score").list.eval(pl.element() * 0.0),
        information=pl.col("information").list.eval(pl.element() * 0.0),
        masked=pl.Series(per_fit, dtype=pl.List(pl.UInt64)),
        peers=pl.lit(json.dumps(check_peers(site, peers))),
    )


def response_totals(responses: Sequence[pl.DataFrame], sizes: Sequence[int]) -> list[tuple[bool, float, list[float], list[float]]]:
    """Per fit (fit_id order) the pooled (has_events, loglik, score, information) from all sites' masked
    responses; refuses responses made for another federation than the one that answered."""
    labels = sorted(str(r["site_label"][0]) for r in responses)
    for response in responses:
        declared = json.loads(response["peers"][0])
        if declared != labels:
            raise SecureAggregationError(
                f"site {response['site_label'][0]} masked its answer for the sites {declared}, but {labels} answered: "
                "the masks cancel only in the sum over exactly the declared sites"
            )
    flats = [np.concatenate([np.asarray(w, dtype=np.uint64) for w in r.sort("fit_id")["masked"].to_list()]) for r in responses]
    total = unmasked_sum(flats)
    out, start = [], 0
    for p in sizes:
        row = total[start : start + 2 + p + p * p]
        out.append((bool(row[0] > 0.5), float(row[1]), row[2 : 2 + p].tolist(), row[2 + p :].tolist()))
        start += 2 + p + p * p
    if start != total.size:
        raise SecureAggregationError(f"masked answers hold {total.size} words, the round's fits {start}")
    return out
