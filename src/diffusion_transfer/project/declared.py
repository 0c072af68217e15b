"""Datasets and source domains declared in configuration.

``sources.<name>`` (a pretrained model and the images it was trained on)
and ``datasets.<name>`` (a target dataset adapted from one source) are read
from the active environment's parameters. The pipeline registry makes
``curate_<name>``, ``classifier_<name>``, ``<method>_<name>`` and
``compare_<name>`` for each dataset; the catalog hook registers a folder or
model given as a path under its derived catalog name. Nothing here names a
dataset: FaceWorld's and the papers' are entries of ``conf/base`` like any
other.
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from diffusion_transfer.core.models.hub import (cached_snapshot, hub_is_text_to_image, hub_offline, is_hub_id,
                                                is_text_to_image_snapshot)
from diffusion_transfer.core.models.text_to_image import is_text_to_image_folder
from diffusion_transfer.datasets import ImageFolderDataset, UNetDataset
from diffusion_transfer.project.schema import DatasetParams, InvalidParametersError, SourceParams, parse

def is_catalog_name(value: str) -> bool:
    """A catalog entry name, not a path or a Hub id (those contain ``/``)."""
    return "/" not in value and "\\" not in value and not value.startswith((".", "~"))


def sampling_param(source: str) -> str:
    """The parameter name of a source's sampling settings (``sampling`` merged
    with ``sources.<source>.sampling``), supplied by the project's hook."""
    return f"params:sources.{source}.sampling"


def source_sampling_conf(parameters: dict[str, Any], source: str) -> dict[str, Any]:
    """A source's sampling settings as conf gives them, unvalidated: ``sampling``
    with ``sources.<source>.sampling`` merged over it (study signatures)."""
    own = ((parameters.get("sources") or {}).get(source) or {}).get("sampling") or {}
    return {**(parameters.get("sampling") or {}), **own}


_SOURCE_SAMPLING = re.compile(r"sources\.(.+)\.sampling")


def supplied_conf(parameters: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    """What conf gives a parameter the hook supplies (``sources.<s>.sampling``,
    :func:`sampling_param`, without ``params:``): the merged block; None for any other."""
    source = _SOURCE_SAMPLING.fullmatch(dotted)
    return source_sampling_conf(parameters, source.group(1)) if source else None


@dataclass(frozen=True)
class SourceDomain:
    params: SourceParams

    @property
    def name(self) -> str:
        return self.params.name

    @property
    def prefix(self) -> str:
        return self.params.catalog_prefix

    @property
    def entries(self) -> dict[str, str]:
        """Catalog names of this source's shared datasets."""
        p, s = self.prefix, self.params
        images = (f"{p}source_samples" if s.images is None  # no images: the model's own samples stand in
                  else s.images if is_catalog_name(s.images) else f"{p}source_images")
        return {
            "source_model": s.model if is_catalog_name(s.model) else f"{p}source_model",
            "source_images": images,
            **{k: f"{p}{k}" for k in ("noise_bank", "source_samples", "translation_inputs")},
        }

    @property
    def sampling_param(self) -> str:
        """The parameter its samplers read: ``sampling`` with this source's overrides (``resolved.py``)."""
        return sampling_param(self.name)

    @property
    def text_to_image(self) -> bool:
        """Its model is a Stable Diffusion-layout folder (text encoder and
        tokenizer beside a UNet; core/models/text_to_image.py), or a Hub id whose
        snapshot in the local cache is one (core/models/hub.py), or, offline, a
        Hub id absent from it: its runs are the text-to-image template
        (pipelines/method_run.py). Online, an id not yet cached is asked for its
        model_index.json alone (load_unet downloads the rest when the run starts)."""
        model = self.params.model
        if is_catalog_name(model):
            return False
        if is_hub_id(model):
            snapshot = cached_snapshot(model)
            if snapshot is None and hub_offline():  # no run of it can start: the pre-run check lists what is
                return True  # missing, and this template gives every method a pipeline to say it (DreamBooth's too)
            if snapshot is None:
                return hub_is_text_to_image(model)
            return is_text_to_image_snapshot(snapshot)
        return is_text_to_image_folder(Path(model).expanduser())

    @property
    def has_images(self) -> bool:
        """False when ``sources.<s>.images`` is null: the model's samples stand in."""
        return self.params.images is not None


@dataclass(frozen=True)
class TargetDataset:
    params: DatasetParams
    source: SourceDomain

    @property
    def name(self) -> str:
        return self.params.name

    @property
    def few_shot(self) -> bool:
        return self.params.kind == "few_shot"

    @property
    def raw_entry(self) -> str:
        images = self.params.images
        return images if images is not None and is_catalog_name(images) else f"{self.name}_raw"


@dataclass(frozen=True)
class Declarations:
    sources: dict[str, SourceDomain]
    datasets: dict[str, TargetDataset]
    #: Declared names Kedro cannot use, with why: left out, so the others' pipelines still exist.
    refused: dict[str, str] = field(default_factory=dict)


def with_declared_names(parameters: dict[str, Any]) -> dict[str, Any]:
    """``datasets.<k>.name`` and ``sources.<k>.name`` default to their key ``k``."""
    out = dict(parameters)
    for block in ("datasets", "sources"):
        entries = out.get(block)
        if isinstance(entries, dict):
            out[block] = {k: ({"name": k, **v} if isinstance(v, dict) else v) for k, v in entries.items()}
    return out


def declarations(parameters: dict[str, Any]) -> Declarations:
    """Validate ``sources`` and ``datasets``; errors name the YAML key."""
    parameters = with_declared_names(parameters)
    sources, refused = {}, {}
    for key, block in (parameters.get("sources") or {}).items():
        if not USABLE_NAME.fullmatch(str(key)):
            refused[f"sources.{key}"] = _refusal(f"sources.{key}", key)
            continue
        s = parse(SourceParams, block, f"sources.{key}")
        _same_name(s.name, key, "sources")
        sources[key] = SourceDomain(s)
    datasets = {}
    for key, block in (parameters.get("datasets") or {}).items():
        if not USABLE_NAME.fullmatch(str(key)):
            refused[f"datasets.{key}"] = _refusal(f"datasets.{key}", key)
            continue
        d = parse(DatasetParams, block, f"datasets.{key}")
        _same_name(d.name, key, "datasets")
        if f"sources.{d.source}" in refused:
            refused[f"datasets.{key}"] = f"'datasets.{key}' is left out: its source 'sources.{d.source}' is refused"
            continue
        if d.source not in sources:
            raise InvalidParametersError(
                f"Invalid parameters in 'datasets.{key}.source': {d.source!r} is not a declared source domain; "
                f"declare it under 'sources' or use one of {sorted(sources)}")
        if d.kind == "few_shot" and d.curation.n_shot is None:
            raise InvalidParametersError(
                f"Invalid parameters in 'datasets.{key}.curation.n_shot': a few_shot dataset needs n_shot "
                "(the number of training images, e.g. 10)")
        datasets[key] = TargetDataset(d, sources[d.source])
    prefixes = [s.prefix for s in sources.values()]
    if len(set(prefixes)) != len(prefixes):
        raise InvalidParametersError(f"Invalid parameters in 'sources': two source domains share a catalog "
                                     f"prefix ({prefixes}); give each its own 'prefix'")
    return Declarations(sources, datasets, refused)


#: A dataset or source name Kedro can use in node, namespace and pipeline names.
USABLE_NAME = re.compile(r"[A-Za-z0-9_]+")


def _refusal(key: str, name: Any) -> str:
    usable = re.sub(r"[^A-Za-z0-9_]+", "_", str(name)).strip("_") or "my_data"
    return (f"'{key}' is left out: a name may hold only letters, digits and '_' (it becomes Kedro node and "
            f"pipeline names such as sdft_<name>); rename the key, e.g. '{usable}'")


def _same_name(name: str, key: str, block: str) -> None:
    if name != key:
        raise InvalidParametersError(
            f"Invalid parameters in '{block}.{key}.name': {name!r} differs from its key {key!r}; "
            "leave 'name' out (it defaults to the key)")


def path_datasets(decl: Declarations) -> dict[str, Any]:
    """Catalog datasets for what is declared as a path: ``<name>_raw`` image
    folders and ``<prefix>source_model`` / ``<prefix>source_images``."""
    out: dict[str, Any] = {}
    for d in decl.datasets.values():
        if d.params.images is not None and not is_catalog_name(d.params.images):
            out[d.raw_entry] = ImageFolderDataset(d.params.images, metadata={"kedro-viz": {"layer": "raw"}})
    for s in decl.sources.values():
        if not is_catalog_name(s.params.model):
            out[s.entries["source_model"]] = UNetDataset(s.params.model, class_label=s.params.class_label,
                                                         metadata={"kedro-viz": {"layer": "pretrained"}},
                                                         yaml_key=f"sources.{s.name}.model")
        if s.params.images is not None and not is_catalog_name(s.params.images):
            out[s.entries["source_images"]] = ImageFolderDataset(s.params.images,
                                                                 metadata={"kedro-viz": {"layer": "raw"}})
    return out
