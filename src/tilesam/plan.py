"""The workflow's plan: which images, models, blocks and outputs a config asks for, and what each job needs.

`workflow/rules/common.smk` builds one `Plan` when Snakemake starts, so a bad config fails
before any job, and its input functions only ask the plan. Everything here is plain Python
(no Snakemake, no torch), so it is unit-tested like the rest of the package.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesam import config as schema
from tilesam import paths
from tilesam.data import synthetic
from tilesam.data.datasets import DatasetError, ImageRecord, images_of
from tilesam.models.inspect import CheckpointInspectionError, has_decoder
from tilesam.models.inspect import card_of as _card
from tilesam.resources import Resources, architecture_of
from tilesam.roster import FINETUNED_MARK, Roster, finetuned_name, split_finetuned  # noqa: F401 (the plan's names)
from tilesam.tiling import TileGrid

CLASSICAL = "classical"  # the classical baseline's model and method name (tilesam.segment.classical.MODEL)


class PlanError(ValueError):
    """The config asks for something that cannot be planned; the message names the key."""


@dataclass
class Plan:
    """Everything the rules ask of a config; built once by `from_config`."""

    config: dict[str, Any]
    images: dict[tuple[str, str], ImageRecord]
    models_of: dict[str, list[str]]  # dataset -> model ids
    specs: dict[str, str]  # model id -> resolved spec (registry name or checkpoint path)
    finetuned: dict[str, tuple[str, str]]  # model id -> (base id, training dataset)
    written: dict[str, Any] = field(default_factory=dict)  # the config as written (defaults not filled in)
    tiling: schema.Tiling = field(init=False)
    resources: Resources = field(init=False)

    def __post_init__(self) -> None:
        try:
            self.tiling = schema.build(schema.Tiling, self.config["segmentation"])
        except ValueError as err:  # e.g. a halo larger than the tile: said before any job runs
            raise PlanError(f"config error: {err}") from err
        self.resources = Resources(self)

    # --- building -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, written: dict[str, Any], base: str | Path = ".") -> Plan:
        """Plan a config as written: checked by the schema, its defaults filled in (`plan.config`).

        A model card's own settings apply to the keys the config does not set. Public datasets
        are fetched here.
        """
        try:
            config = schema.complete(written)
        except ValueError as err:
            raise PlanError(str(err)) from err
        datasets = config["datasets"]
        images = {}
        for dataset, cfg in datasets.items():
            try:
                found = images_of(dataset, cfg, base, paths.SYNTHETIC_DIR, offline=config["offline"] or None)
                for rec in found:
                    images[(dataset, rec.name)] = rec
            except DatasetError as err:
                raise PlanError(f"config error: {err}") from err
        try:
            roster = Roster.of(config["models"], datasets)
        except ValueError as err:
            raise PlanError(str(err)) from err
        models_of, specs, finetuned = roster.models_of, roster.specs, roster.finetuned
        config["compare"] = roster.compare_by_id(config["compare"])
        try:
            config["segmentation"]["methods"] = roster.methods_by_id(
                config["segmentation"]["methods"], config["models"]
            )
        except ValueError as err:
            raise PlanError(str(err)) from err
        plan = cls(config, images, models_of, specs, finetuned, copy.deepcopy(written))  # the rules fill in `config`
        plan._check()
        if config["segmentation"]["tiles_per_block"] == "auto":
            config["segmentation"]["tiles_per_block"] = plan.resources.block_tiles()
            plan.tiling = schema.build(schema.Tiling, config["segmentation"])
        return plan

    def architecture(self, model: str) -> str:
        """A planned model's architecture (a finetuned model's: its base's)."""
        return architecture_of(self.specs[self.finetuned.get(model, (model, None))[0]])

    def _check(self) -> None:
        for method, search in self.search_datasets.items():
            where = f"config error in segmentation.{method}_search"
            if search not in self.config["datasets"]:
                raise PlanError(f"{where}: dataset {search!r} is not in datasets")
            if not all(r.labels for r in self.records(search)):
                raise PlanError(f"{where}: dataset {search!r} needs labels for every image")
        self._check_methods()
        val = self.config["finetune"]["val_dataset"]
        if val is not None and val not in self.config["datasets"]:
            raise PlanError(f"config error in finetune.val_dataset: {val!r} is not in datasets")
        for base, dataset in self.finetuned.values():  # said now: an input function's error would be swallowed
            self.finetune_inputs(dataset, base)
        for pair in self.config["compare"]:
            for role in ("vanilla", "finetuned"):
                if pair[role] not in self.specs:
                    raise PlanError(f"config error in compare: {role} model {pair[role]!r} is not in models")
        self._check_classical()

    # --- images and tiles -------------------------------------------------------------------
    def records(self, dataset: str) -> list[ImageRecord]:
        return [r for (d, _), r in sorted(self.images.items()) if d == dataset]

    def record(self, dataset: str, image: str) -> ImageRecord:
        return self.images[(dataset, image)]

    def has_labels(self, dataset: str, image: str) -> bool:
        return self.record(dataset, image).labels is not None

    def grid(self, dataset: str, image: str) -> TileGrid:
        return self.tiling.grid(self.record(dataset, image).shape)

    def n_blocks(self, dataset: str, image: str) -> int:
        return self.tiling.n_blocks(self.record(dataset, image).shape)

    def encoder_model(self, model: str) -> str:
        """The model whose embeddings `model` reads: a model finetuned with a frozen encoder, its base's.

        The stores name the encoder by content (`embed.Provenance`), so were the two encoders to
        differ after all, the finetuned model's jobs would refuse the base's stores, not misuse them.
        """
        if model in self.finetuned and "image_encoder" not in self.config["finetune"]["train_parts"]:
            return self.encoder_model(self.finetuned[model][0])
        return model

    def embedding_stores(self, dataset: str, image: str, model: str) -> list[str]:
        owner = self.encoder_model(model)
        blocks = range(self.n_blocks(dataset, image))
        return [paths.EMBEDDINGS.format(dataset=dataset, image=image, model=owner, block=b) for b in blocks]

    def block_stores(self, dataset: str, image: str, model: str, method: str) -> list[str]:
        blocks = range(self.n_blocks(dataset, image))
        return [
            paths.SEGMENTS.format(dataset=dataset, image=image, model=model, method=method, block=b) for b in blocks
        ]

    # --- automatic segmentation methods per model ------------------------------------------
    def has_decoder(self, model: str) -> bool:
        """Whether a model comes with an instance-segmentation decoder (read without loading it)."""
        try:
            if model in self.finetuned:  # not written yet: it has one if it trains one or its base has one
                base = self.finetuned[model][0]
                return "decoder" in self.config["finetune"]["train_parts"] or has_decoder(self.specs[base])
            return has_decoder(self.specs[model])
        except CheckpointInspectionError as err:
            raise PlanError(f"config error in models: {err}") from err

    def record_spec(self, model: str) -> str:
        """What a model's record must say it loads: its resolved spec (a finetuned model: its checkpoint)."""
        if model in self.finetuned:
            base, dataset = self.finetuned[model]
            return paths.FINETUNED.format(dataset=dataset, base=base)
        return self.specs[model]

    def listed_methods(self, model: str | None = None) -> list[str]:
        """The methods the config lists for one model (its own list where `methods` is a mapping by model),
        or with no model, every model's."""
        methods = self.config["segmentation"]["methods"]
        if isinstance(methods, list):
            return methods
        if model is None:
            return list(dict.fromkeys(m for listed in methods.values() for m in listed))
        return methods.get(model, [])

    def methods_of(self, model: str) -> list[str]:
        """The config's methods for one model, no repeats. `auto`: amg without a decoder; with one, the
        better of ais and apg on the validation data where there is some (a row `auto`), else ais."""
        resolved = []
        for method in self.listed_methods(model):
            if method == schema.AUTO_METHOD and not self.has_decoder(model):
                method = "amg"
            elif method == schema.AUTO_METHOD and not {"ais", "apg"} <= set(self.search_datasets):
                method = "ais"
            resolved.append(method)
        return list(dict.fromkeys(resolved))

    def _check_methods(self) -> None:
        """Every model asked for a decoder's method (ais, apg: by name; `auto` never is) must have a decoder."""
        for model in sorted({m for ms in self.models_of.values() for m in ms}):
            for method in {"ais", "apg"} & set(self.methods_of(model)):
                if not self.has_decoder(model):
                    raise PlanError(
                        f"config error in segmentation.methods: model {model!r} ({self.specs[model]}) has no "
                        f"instance-segmentation decoder, which {method} needs; use amg, or auto (a decoder's "
                        "methods where a model has one)"
                    )

    def settings(self, model: str, method: str) -> dict[str, Any]:
        """`segmentation.<method>` for one model, in layers: the schema's defaults, the model card's own
        for the method (a finetuned model: its base's), the keys the config as written sets."""
        section = schema.defaults("segmentation", method)
        base = self.finetuned.get(model, (model, None))[0]
        own = getattr(_card(self.specs.get(base, base)), method, None) or {}
        if unknown := set(own) - set(section):
            raise PlanError(f"model card of {base!r}: unknown {method} defaults {sorted(unknown)}")
        written = self.written.get("segmentation", {}).get(method) or {}
        return {**section, **own, **written}

    def segment_config(self, model: str) -> dict[str, Any]:
        """The config sections a model's segment and search jobs get (`--config`), its methods' settings resolved."""
        segmentation = {**self.config["segmentation"], **{m: self.settings(model, m) for m in schema.SEGMENTERS}}
        return {"segmentation": segmentation, "embeddings": self.config["embeddings"], "stitch": self.config["stitch"]}

    # --- which datasets are scored ----------------------------------------------------------
    @property
    def search_datasets(self) -> dict[str, str]:
        """method -> its parameter search's validation dataset, for the searches that are on. With `auto` in
        the methods, a validation dataset of ais or apg is both's (auto compares the two searches)."""
        seg = self.config["segmentation"]
        found = {m: seg.get(f"{m}_search", {}).get("dataset") for m in schema.SEGMENTERS}
        if schema.AUTO_METHOD in self.listed_methods():
            either = found["ais"] or found["apg"]
            found["ais"], found["apg"] = found["ais"] or either, found["apg"] or either
        return {m: d for m, d in found.items() if d is not None}

    @property
    def search_dataset(self) -> str | None:
        """The AMG search's validation dataset."""
        return self.search_datasets.get("amg")

    def is_tuning(self, dataset: str) -> bool:
        """Datasets that tune (a parameter search) or train (finetuning) are not segmented for the table."""
        training = {d for _, d in self.finetuned.values()} | {self.config["finetune"]["val_dataset"]}
        return dataset in self.search_datasets.values() or dataset in training

    def prompt_modes(self, dataset: str) -> list[str]:
        """The dataset's own prompt modes, else the evaluation section's."""
        own = self.config["datasets"][dataset].get("prompts")
        return self.config["evaluation"]["prompts"] if own is None else own

    def scored(self) -> list[tuple[str, str]]:
        """(dataset, image) of every labelled image that is scored."""
        return [(d, i) for (d, i) in sorted(self.images) if self.has_labels(d, i) and not self.is_tuning(d)]

    # --- outputs ----------------------------------------------------------------------------
    def evaluations(self) -> list[str]:
        return [
            paths.EVALUATION.format(dataset=d, image=i, model=m, method=method)
            for d, i in self.scored()
            for m in self.models_of[d]
            for method in self.methods_of(m) + self.prompt_modes(d)
        ]

    def qualitative_models(self, dataset: str) -> list[str]:
        """Models shown side by side: the compare pairs' models of this dataset, else all of them."""
        paired = [m for pair in self.config["compare"] for m in (pair["vanilla"], pair["finetuned"])]
        chosen = [m for m in dict.fromkeys(paired) if m in self.models_of[dataset]]
        return chosen or self.models_of[dataset]

    def qualitative(self, dataset: str) -> dict[str, Any]:
        """The qualitative figure of a dataset's first scored image: every (model, method) row of its
        table, the classical baseline last; the models trained on the dataset are marked."""
        image = next(i for d, i in self.scored() if d == dataset)
        rows = [(m, method) for m in self.qualitative_models(dataset) for method in self.methods_of(m)]
        rows += [(CLASSICAL, CLASSICAL)] if self.classical else []
        return {
            "image": paths.IMAGE.format(dataset=dataset, image=image),
            "gt": paths.LABELS.format(dataset=dataset, image=image),
            "results": [paths.STITCHED.format(dataset=dataset, image=image, model=m, method=x) for m, x in rows],
            "models": [m for m, _ in rows],
            "methods": [x for _, x in rows],
            "in_domain": self.in_domain_models(dataset),
        }

    def all_outputs(self) -> list[str]:
        stitched = [
            paths.STITCHED.format(dataset=d, image=i, model=m, method=method)
            for (d, i) in sorted(self.images)
            if not self.is_tuning(d)
            for m in self.models_of[d]
            for method in self.methods_of(m)
        ]
        if not self.evaluations():
            return stitched
        labelled = sorted({d for d, _ in self.scored()})
        return [
            *stitched,
            paths.TABLE,
            paths.TABLE_MD,
            *(paths.QUALITATIVE.format(dataset=d) for d in labelled),
        ]

    # --- the parameter searches (AMG thresholds, AIS post-processing) -------------------------
    def search_result(self, dataset: str, model: str, method: str = "amg") -> list[str]:
        """The method's validation search table, which sets its parameters on every other dataset."""
        searched = ("ais", "apg") if method == schema.AUTO_METHOD else (method,)
        if not set(searched) <= set(self.search_datasets) or self.is_tuning(dataset):
            return []
        return [paths.SEARCH.format(method=m, model=model) for m in searched]

    def search_images(self, model: str, method: str = "amg") -> list[dict[str, Any]]:
        """Per validation image of the method's search: its image, ground truth and embedding stores."""
        dataset = self.search_datasets.get(method)
        if dataset is None:
            return []
        return [
            {
                "image": paths.IMAGE.format(dataset=dataset, image=r.name),
                "gt": paths.LABELS.format(dataset=dataset, image=r.name),
                "embeddings": self.embedding_stores(dataset, r.name, model),
            }
            for r in self.records(dataset)
        ]

    # --- the classical baseline (tilesam.segment.classical) ---------------------------------
    def _baseline(self, key: str) -> Any:
        """A key of the config's `baseline` section (the schema's default where the config has none)."""
        return self.config.get("baseline", {}).get(key, schema.defaults("baseline")[key])

    @property
    def classical(self) -> bool:
        return bool(self._baseline("classical"))

    @property
    def classical_search_dataset(self) -> str | None:
        """The baseline's validation dataset: its own, else the AMG search's, else finetuning's validation."""
        if not self.classical:
            return None
        own = self._baseline("search").get("dataset")
        return own or self.search_dataset or self.config["finetune"]["val_dataset"]

    def _check_classical(self) -> None:
        if not self.classical:
            return
        if CLASSICAL in self.specs:
            raise PlanError(f"config error in models: {CLASSICAL!r} is the classical baseline's name in the tables")
        dataset = self.classical_search_dataset
        if dataset is None:
            return
        where = "config error in baseline.search"
        if dataset not in self.config["datasets"]:
            raise PlanError(f"{where}: dataset {dataset!r} is not in datasets")
        if not self.is_tuning(dataset):
            raise PlanError(f"{where}: dataset {dataset!r} is scored; search on a validation dataset")
        if not self.records(dataset) or not all(r.labels for r in self.records(dataset)):
            raise PlanError(f"{where}: dataset {dataset!r} needs labels for every image")

    def classical_evaluations(self) -> list[str]:
        """The baseline's evaluation of every scored image (model and method `classical`)."""
        if not self.classical:
            return []
        return [
            paths.EVALUATION.format(dataset=d, image=i, model=CLASSICAL, method=CLASSICAL) for d, i in self.scored()
        ]

    def classical_search_result(self, dataset: str) -> list[str]:
        """The baseline's search table, which sets sigma and h of every scored dataset."""
        if self.classical_search_dataset is None or self.is_tuning(dataset):
            return []
        return [paths.CLASSICAL_SEARCH]

    def classical_search_images(self) -> list[dict[str, str]]:
        """Per validation image of the baseline's search: the imported image and ground truth."""
        dataset = self.classical_search_dataset
        if dataset is None:
            return []
        return [
            {
                "image": paths.IMAGE.format(dataset=dataset, image=r.name),
                "gt": paths.LABELS.format(dataset=dataset, image=r.name),
            }
            for r in self.records(dataset)
        ]

    # --- in_domain: models scored on data they were trained on -------------------------------
    def dataset_identity(self, dataset: str) -> str:
        """What a dataset is across its splits: its public dataset's id, else its images glob.

        The synthetic sources are one dataset (`synthetic_train` is more of the demo's kind of images),
        so a model finetuned on one and scored on the other is in-domain, like DSB2018's train and test.
        """
        cfg = self.config["datasets"][dataset]
        if cfg.get("source") in synthetic.SOURCES:
            return "synthetic"
        return dataset_key(cfg["source"]) if cfg.get("source") else f"images:{cfg['images']}"

    def trained_on(self, model: str) -> frozenset[str]:
        """Identities of the datasets a model was trained on (its card's, plus a finetuning's own)."""
        if model in self.finetuned:
            base, dataset = self.finetuned[model]
            return self.trained_on(base) | {self.dataset_identity(dataset)}
        spec = self.specs.get(model)
        if spec is None:
            return frozenset()
        if Path(spec).is_file():  # a checkpoint: a tilesam model card beside it says what it learnt from
            card = Path(spec).with_suffix(".json")
            names = json.loads(card.read_text()).get("trained_on", []) if card.is_file() else []
        else:
            from tilesam.models.registry import resolve

            names = getattr(resolve(spec), "trained_on", ())
        return frozenset(dataset_key(name) for name in names)

    def in_domain(self) -> list[list[str]]:
        """[dataset, model] of every scored dataset and a model trained on it (its rows are marked)."""
        datasets = sorted({d for d, _ in self.scored()})
        return [[d, m] for d in datasets for m in self.models_of[d] if self.dataset_identity(d) in self.trained_on(m)]

    def in_domain_models(self, dataset: str) -> list[str]:
        return [m for d, m in self.in_domain() if d == dataset]

    # --- finetuning -------------------------------------------------------------------------
    def labelled(self, dataset: str) -> list[ImageRecord]:
        records = [r for r in self.records(dataset) if r.labels]
        if not records:
            raise PlanError(f"finetune: dataset {dataset!r} has no labelled images")
        keyed = [r.image for r in records if r.ndim == 3 and r.key]
        if keyed:  # finetuning reads TIFF volumes (each section a training image), not containers
            raise PlanError(f"finetune: dataset {dataset!r}: volumes in containers are not supported ({keyed[0]})")
        return records

    def finetune_inputs(self, dataset: str, base: str) -> dict[str, Any]:
        """The training (and validation) images with labels, and the base model's record."""
        train = self.labelled(dataset)
        val_dataset = self.config["finetune"]["val_dataset"]
        val = self.labelled(val_dataset) if val_dataset else []
        return {
            "images": [r.image for r in train],
            "labels": [r.labels for r in train],
            "val_images": [r.image for r in val],
            "val_labels": [r.labels for r in val],
            "model": paths.MODEL_RECORD.format(model=base),
        }


def dataset_key(name: str) -> str:
    """A dataset name as cards and configs may spell it, made comparable: DSB2018 / dsb-2018 -> dsb2018."""
    return re.sub(r"[^a-z0-9]", "", name.lower())
