"""Checkpoints of potentials: ``config.json`` (hyperparameters, metadata) and ``params.msgpack``;
ensembles of seeds: a folder with ``ensemble.json`` listing one checkpoint folder per seed.

Loading needs only flax and the model definitions, not the training code or optax, so
the calculator, MD, explanations and reports load a model without importing
:mod:`jaxrel.train`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
from flax import nnx

from jaxrel.files import atomic_write, write_json
from jaxrel.models import ModelConfig, Potential

UNITS = {"length": "Å", "energy": "eV", "forces": "eV/Å"}
CHECKPOINT_FORMAT = 1


def save_checkpoint(directory: str | Path, potential: Potential, params,
                    metadata: dict | None = None) -> Path:
    """Write ``config.json`` and ``params.msgpack`` into ``directory`` (created if needed).

    ``metadata`` (JSON-serialisable; NaN is stored as null) is stored under ``"metadata"`` in
    config.json, with the SHA-256 of params.msgpack (``params_sha256``), so that
    :func:`load_checkpoint` can tell a config from one parameter file beside parameters from
    another. Each file is written atomically (:func:`jaxrel.files.atomic_write`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = flax.serialization.msgpack_serialize(jax.device_get(nnx.to_pure_dict(params)))
    config = {"format": CHECKPOINT_FORMAT, "model": potential.config.to_dict(), "units": UNITS,
              "params_sha256": params_digest(data), "metadata": metadata or {}}
    atomic_write(directory / "params.msgpack", data)
    write_json(directory / "config.json", config)
    return directory


def params_digest(data: bytes) -> str:
    """SHA-256 (hex) of serialised parameters: the identity of a checkpoint's model."""
    return hashlib.sha256(data).hexdigest()


def checkpoint_digest(directory: str | Path) -> str:
    """The ``params_sha256`` a checkpoint's config.json records (:func:`params_digest` of its params)."""
    return json.loads((Path(directory) / "config.json").read_text())["params_sha256"]


def load_checkpoint(directory: str | Path) -> tuple[Potential, nnx.State, dict]:
    """Reload a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(potential, params, metadata)``; params are bit-identical to the saved ones.
    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
        ValueError: config.json or params.msgpack is unreadable or does not match.
    """
    directory = Path(directory)
    for name in ("config.json", "params.msgpack"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"no checkpoint at {directory}: {name} is missing; pass the "
                                    "model folder written by 'jaxrel train' (OUT/model)")
    try:
        config = json.loads((directory / "config.json").read_text())
        model_config = ModelConfig.from_dict(config["model"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {directory}/config.json is corrupt ({err}); retrain or "
                         "restore the file") from None
    data = (directory / "params.msgpack").read_bytes()
    if config.get("params_sha256", params_digest(data)) != params_digest(data):
        raise ValueError(f"checkpoint {directory}: params.msgpack is corrupt: it is not the file config.json was written "
                         "with (an interrupted or mixed copy); restore both files from one run or retrain")
    potential, template = Potential.create(model_config)
    try:
        restored = flax.serialization.msgpack_restore(data)
        expected = jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(template))
        found = jax.tree.map(lambda x: (x.shape, x.dtype), restored)
        if expected != found:
            raise ValueError("parameter shapes do not match the model config")
        nnx.replace_by_pure_dict(template, jax.tree.map(jnp.asarray, restored))
    except Exception as err:  # msgpack raises many types on truncated or foreign bytes
        raise ValueError(f"checkpoint {directory}/params.msgpack is corrupt ({type(err).__name__}: "
                         f"{err}); retrain or restore the file") from None
    return potential, template, config.get("metadata", {})


ENSEMBLE_FILE = "ensemble.json"


def save_ensemble(directory: str | Path, members: list[str], seeds: list[int], metadata: dict | None = None) -> Path:
    """Write ``ensemble.json``: the member checkpoint folders (relative to ``directory``) and their seeds."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_json(directory / ENSEMBLE_FILE, {"format": CHECKPOINT_FORMAT, "members": members,
                                                  "seeds": seeds, "metadata": metadata or {}})


def load_models(directory: str | Path) -> list[tuple[Potential, nnx.State, dict]]:
    """One checkpoint (``config.json``) or every member of an ensemble (``ensemble.json``).

    Returns:
        ``[(potential, params, metadata), …]``: one entry for a checkpoint, one per seed for an
        ensemble (metadata gains ``"seed"``).
    Raises:
        FileNotFoundError, ValueError: as :func:`load_checkpoint`, for the folder or a member;
            a corrupt ``ensemble.json``.
    """
    directory = Path(directory)
    if not (directory / ENSEMBLE_FILE).is_file():
        return [load_checkpoint(directory)]
    try:
        listing = json.loads((directory / ENSEMBLE_FILE).read_text())
        members, seeds = listing["members"], listing["seeds"]
        if len(members) != len(seeds) or not members:
            raise ValueError("members and seeds differ in length or are empty")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{directory / ENSEMBLE_FILE} is corrupt ({err}); retrain with --seeds") from None
    out = []
    for member, seed in zip(members, seeds):
        potential, params, metadata = load_checkpoint(directory / member)
        out.append((potential, params, {**metadata, "seed": seed}))
    return out
