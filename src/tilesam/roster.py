"""The models a config names: each entry resolved to a spec and an id, per dataset, and the finetuned
models (`<base>-ft-<dataset>`) with their bases. Plain Python, part of planning (tilesam.plan).

An id is what a table row, a record file and a results folder are named after: a registry model's
name, a checkpoint file's `<stem>-<hash of its path and content>` (tilesam.models.spec.model_id).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tilesam.models.spec import model_id, resolve_spec

FINETUNED_MARK = "-ft-"  # `<base>-ft-<dataset>`: <base> finetuned on <dataset>


def finetuned_name(base: str, dataset: str) -> str:
    return f"{base}{FINETUNED_MARK}{dataset}"


def split_finetuned(spec: str, datasets: dict) -> tuple[str, str] | None:
    """(base, dataset) of a model named `<base>-ft-<dataset>` for a dataset of the config, else None."""
    base, sep, dataset = spec.rpartition(FINETUNED_MARK)
    return (base, dataset) if sep and dataset in datasets else None


def _resolve(entry: str, modality: str = "other", finetuned_from: str | None = None) -> str:
    try:
        return resolve_spec(entry, modality=modality)
    except (KeyError, ValueError, FileNotFoundError) as err:
        what = f"{finetuned_from!r} is finetuned from {entry!r}, which cannot be used: " if finetuned_from else ""
        raise ValueError(f"config error in models: {what}{err}") from err


@dataclass
class Roster:
    """The planned models: ids per dataset, each id's resolved spec, and the finetuned ids' (base id, dataset)."""

    models_of: dict[str, list[str]]
    specs: dict[str, str] = field(default_factory=dict)
    finetuned: dict[str, tuple[str, str]] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)  # config entry -> its id

    @classmethod
    def of(cls, models: list[str], datasets: dict) -> Roster:
        """Resolve the config's `models` for every dataset (a modality picks a bare name's model).

        The same model named twice (or one file by two paths) is an error naming both entries: a table
        with one row for two entries would hide one of them.
        """
        roster = cls({d: [] for d in datasets})
        first: dict[str, str] = {}  # id -> the entry that planned it
        for entry in models:
            pair = split_finetuned(entry, datasets)
            if pair:  # its id is `<base id>-ft-<dataset>`: a file base's id, not its path, so it is one safe name
                base_spec = _resolve(pair[0], finetuned_from=entry)
                base_id = model_id(base_spec)
                roster.specs.setdefault(base_id, base_spec)
                roster.entries[entry] = finetuned_name(base_id, pair[1])
                roster.finetuned[roster.entries[entry]] = (base_id, pair[1])
            for dataset, cfg in datasets.items():
                spec = roster.entries[entry] if pair else _resolve(entry, cfg.get("modality", "other"))
                mid = model_id(spec)
                if mid in roster.models_of[dataset]:
                    same = "is listed more than once" if first[mid] == entry else f"is the same model as {first[mid]!r}"
                    raise ValueError(
                        f"config error in models: {entry!r} {same} ({spec}, id {mid}): list each model once"
                    )
                first.setdefault(mid, entry)
                roster.specs.setdefault(mid, spec)
                roster.models_of[dataset].append(mid)
                if entry != "auto":  # `auto` names a model per modality: no one id
                    roster.entries.setdefault(entry, mid)
        return roster

    def compare_by_id(self, pairs: list[dict]) -> list[dict]:
        """Compare pairs with model ids: a pair may name a checkpoint as the models list does (``run1/best.pt``).

        The rules pass ``config["compare"]`` on to the report, which matches it against the table's ids.
        """
        ids = dict(self.entries)
        for pair in pairs:
            for entry in pair.values():
                if entry not in self.specs and entry not in ids and entry != "auto":
                    try:
                        ids[entry] = model_id(resolve_spec(entry))
                    except (KeyError, ValueError, FileNotFoundError):
                        pass  # a finetuned name is its own id; anything else is reported by the plan's check
        return [{role: ids.get(model, model) for role, model in pair.items()} for pair in pairs]

    def methods_by_id(self, methods: list[str] | dict[str, list[str]], models: list[str]):
        """`segmentation.methods` with model ids: a list as it is; a mapping keyed by the entries of `models`
        (or their ids; `auto`'s key covers the models it picks) keyed by model id, every model named once."""
        if isinstance(methods, list):
            return methods
        where = "config error in segmentation.methods"
        planned = {m for ms in self.models_of.values() for m in ms}
        ids_of = {e: {self.entries[e]} for e in models if e in self.entries}
        if "auto" in models:
            ids_of["auto"] = planned - {i for ids in ids_of.values() for i in ids}
        by_id: dict[str, list[str]] = {}
        for key, listed in methods.items():
            ids = ids_of[key] if key in ids_of else next((ids for ids in ids_of.values() if ids == {key}), None)
            if ids is None:
                raise ValueError(f"{where}: model {key!r} is not in models ({', '.join(map(repr, models))})")
            for mid in ids:
                if mid in by_id:
                    raise ValueError(f"{where}: model {key!r} is named twice (as its entry and as its id {mid!r})")
                by_id[mid] = list(listed)
        if missing := [e for e, ids in ids_of.items() if not ids <= set(by_id)]:
            missing_names = ", ".join(map(repr, missing))
            raise ValueError(
                f"{where}: a mapping must give every model of models its methods; missing: {missing_names}"
            )
        return by_id
