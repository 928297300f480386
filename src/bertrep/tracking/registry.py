"""The model registry: source models registered by task, found again by their config
key, downloaded once into the local cache; the activation tables their runs logged.

    uri = register_model(task, source, run_id, tags)    # models:/bertrep-<task>/<version>
    uri = find_source(task, config_key)                 # or None
    folder = download_model(uri)                        # also models:/bertrep-<task>@<alias>

Aliases name a seed's newest non-diverged source of a base model: `<base>-seed<s>`
(`base_model_slug`: `answerdotai/ModernBERT-base` -> `modernbert-base`, a folder -> its
name), and `seed<s>` for the default base model (MiniLM) as stores before it had.

Names and URI schemes are `bertrep.tracking`'s.
"""

from __future__ import annotations

import hashlib
import re

from bertrep import env
from bertrep.data.identity import MINILM
from bertrep.tracking import (
    BASE_MODEL,
    CONFIG_KEY,
    LOGGED_MODELS_URI,
    MODELS_URI,
    RUN_ID,
    RUNS_URI,
    SEED,
    TASK,
    TASK_DIGEST,
    TASK_FILE,
    activations_dir,
    activations_step,
    client,
    mlflow,
    parse_model_uri,
    probe_digests,
    registered_model_name,
)


def ensure_registered_model(task: str) -> None:
    """Create `bertrep-<task>` unless it exists; safe when parallel trials race to it."""
    mlflow_client = client()
    name = registered_model_name(task)
    try:
        mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            mlflow_client.create_registered_model(name, tags={TASK: task})
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def base_model_slug(base_model: str) -> str:
    """A base model as an alias may spell it (MLflow allows letters, digits, `_` and `-`):
    a hub id or folder by its last part, lower case (`answerdotai/ModernBERT-base` ->
    `modernbert-base`), an MLflow URI by what follows its scheme."""
    scheme, _, rest = base_model.rstrip("/").rpartition(":/")
    name = rest if scheme else rest.rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-_")[:200] or "model"


def source_aliases(seed: object, base_model: str = MINILM) -> list[str]:
    """The aliases a source of `base_model` and `seed` moves to itself: `<base>-seed<s>`,
    one per base model name (two folders of one name share it; config keys tell them
    apart); and `seed<s>` for the default base model, which existing stores and docs use."""
    aliases = [f"{base_model_slug(base_model)}-seed{seed}"]
    return [f"seed{seed}", *aliases] if base_model == MINILM else aliases


def register_model(task: str, source: str, run_id: str, tags: dict, alias: bool = True) -> str:
    """Register `source` (a logged model's models:/m-... URI, or runs:/<id>/<path>) as a
    new version of `bertrep-<task>` tagged with `tags` and the run; its models:/ URI.
    With `alias` and tags[SEED], the `source_aliases` of its seed and base model
    (tags[BASE_MODEL], else the default) move to it: the newest registered (and, as train
    passes it, not diverged) source of that seed and base model."""
    name = registered_model_name(task)
    ensure_registered_model(task)
    tags = {k: str(v) for k, v in tags.items()} | {RUN_ID: run_id}
    logged = source.removeprefix(MODELS_URI) if source.startswith(LOGGED_MODELS_URI) else None
    version = client().create_model_version(
        name, source=source, run_id=run_id, tags=tags, model_id=logged
    )
    if alias and SEED in tags:
        for each in source_aliases(tags[SEED], tags.get(BASE_MODEL, MINILM)):
            client().set_registered_model_alias(name, each, version.version)
    return f"{MODELS_URI}{name}/{version.version}"


def model_bytes(model_uri: str) -> int:
    """The size MLflow recorded for a logged model (its MLmodel's model_size_bytes)."""
    return int(mlflow.models.Model.load(model_uri).model_size_bytes or 0)


def find_registered(task: str, tags: dict) -> str | None:
    """The newest registered version of `bertrep-<task>` carrying `tags`, as a
    models:/ URI, or None."""
    query = f"name = '{registered_model_name(task)}'" + "".join(
        f" and tags.{k} = '{v}'" for k, v in tags.items()
    )
    versions = client().search_model_versions(query)
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return f"{MODELS_URI}{newest.name}/{newest.version}"


def find_source(task: str, config_key: str) -> str | None:
    """The model tuned on `task` alone: the newest registered version of `bertrep-<task>`
    tagged with the source run's config key (TrainConfig.key()), as a models:/ URI."""
    return find_registered(task, {CONFIG_KEY: config_key})


def download_model(uri: str) -> str:
    """A local folder holding the checkpoint at an MLflow URI (models:/name/version,
    models:/name@alias, runs:/id/checkpoint). Downloads are cached by resolved source."""
    source = uri
    if uri.startswith(MODELS_URI):
        name, _, ref = uri[len(MODELS_URI) :].partition("/")
        if "@" in name:
            name, alias = name.split("@", 1)
            version = client().get_model_version_by_alias(name, alias)
        elif ref:
            version = client().get_model_version(name, ref)
        else:
            raise ValueError(f"model URI {uri} names no version: use models:/NAME/VERSION")
        source = version.source
    key = hashlib.sha256(f"{mlflow.get_tracking_uri()}|{source}".encode()).hexdigest()[:20]
    target = env.cache_root() / "models" / key
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target))
        (target / ".path").write_text(local)
        done.touch()
    return (target / ".path").read_text()


def source_tables(model_uri: str, digests: dict[str, str]) -> dict[str, str]:
    """The activation tables the run behind a registered model logged on its probe sets,
    at its last step, where that run's probe set has the digest in `digests`:
    {probe task: runs:/<id>/activations/<task>/step_<s>.parquet}. Empty for a model that
    is not a registered version (a folder, a hub id, runs:/)."""
    try:
        name, version = parse_model_uri(model_uri)
    except ValueError:
        return {}
    run_id = client().get_model_version(name, version).run_id
    if not run_id:
        return {}
    tags = client().get_run(run_id).data.tags
    out = {}
    for task, digest in digests.items():
        if probe_digests(tags).get(task) != digest:
            continue
        files = [f.path for f in client().list_artifacts(run_id, activations_dir(task))]
        if files:
            last = max(files, key=activations_step)
            out[task] = f"{RUNS_URI}{run_id}/{last}"
    return out


def task_file_of_name(name: str, digest: str, source: str) -> str | None:
    """Another task file that runs in this store were trained under `name` with: one of
    other content at another place (an edited file at the same place is the same task,
    retrained; a moved one of the same content is the same task). None if there is none."""
    quoted = source.replace("'", "\\'")
    runs = mlflow.search_runs(
        filter_string=f"tags.`{TASK_DIGEST}{name}` != '{digest}' "
        f"and tags.`{TASK_FILE}{name}` != '{quoted}'",
        search_all_experiments=True,
        output_format="list",
        max_results=1,
    )
    return runs[0].data.tags[f"{TASK_FILE}{name}"] if runs else None
