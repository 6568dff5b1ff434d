"""Load a decoder-only causal LM from any supported source into a ``LoadedModel``."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import ScalelensError, ScalelensWarning, first_line
from .describe import check_architecture, describe
from .hub import explain_failure, is_offline, use_cache_only
from .hub_cache import has_tokenizer_files
from .hub_refs import step_revision
from .info import ModelInfo
from .quiet import quiet_hf_progress, quiet_load_report
from .revisions import parse_step
from .sources import ResolvedSource, checkpoint_revision, looks_like_hub_id, resolve_source
from .wrapped import unwrap

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


@dataclass
class LoadedModel:
    """A model ready for inspection.

    Attributes:
        model: The Hugging Face causal LM, in eval mode.
        tokenizer: Its tokenizer.
        info: What was loaded (stored with every capture and result).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo

    def __repr__(self) -> str:
        """One line: what was loaded and where it lives (the model's own repr is pages long)."""
        i = self.info
        at = f"@{i.revision}" if i.revision else ""
        device = next((p.device for p in self.model.parameters()), "no parameters")
        return (f"LoadedModel({i.name}{at}, {i.architecture}, {i.n_params:,} params, "
                f"{i.n_layers} layers x {i.n_heads} heads, d_model {i.d_model}, {i.dtype} on {device})")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Map ``"bf16"``, ``"float32"``, ... or a ``torch.dtype`` to a floating ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ScalelensError(f"dtype {dtype} is not a floating type; use float32, bf16 or fp16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ScalelensError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[key]


def load_model(
    source: Any,
    *,
    revision: str | None = None,
    checkpoint: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    gguf_file: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    tokenizer: Any = None,
    default_tokenizer: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a decoder-only causal LM and describe it.

    ``source`` may be a hub id (``EleutherAI/pythia-160m``; honours
    ``HF_HUB_OFFLINE``), a local HF directory, a suite size directory
    (``<suite>/<size>``, with ``revision``/``checkpoint`` or the last step by
    default) or one of its ``step<N>`` directories, a ``.gguf`` file, an in-memory
    ``PreTrainedModel`` (pass ``tokenizer``), an nnsight ``LanguageModel`` or a
    TransformerLens ``TransformerBridge`` (their underlying HF model is returned), or one
    of these wrapped by ``torch.compile`` (the model itself is returned; captures run it
    uncompiled).

    Args:
        source: See above.
        revision: Hub revision or suite checkpoint name (``step3000``).
        checkpoint: A training step N: ``revision=f"step{N}"``, or for a hub repo the revision
            it names step N by (``step1000-tokens4B`` for OLMo, ``global_step1000`` for
            BLOOM's intermediate checkpoints), from the cached revisions or the hub's listing.
        device: Target device. Loaded models default to ``cpu``; in-memory models
            stay where they are unless a device is given.
        dtype: ``float32`` (default for loaded models), ``bfloat16``, ``float16``...;
            in-memory models keep their dtype unless one is given.
        attn_implementation: ``sdpa``, ``eager``, ... Loaded models default to
            transformers' choice (``sdpa`` where the architecture supports it, else
            ``eager``; Gemma-2 is eager); in-memory models keep theirs unless one is
            given. The implementation in use is recorded in ``info``.
        gguf_file: GGUF file name inside ``source`` (a directory or hub id).
        cache_dir: Hub cache directory (default ``HF_HUB_CACHE``), for the model and for a
            tokenizer given by hub id.
        tokenizer: A tokenizer object, or a path/id to load one from; default the
            source's own.
        default_tokenizer: A path/id to load the tokenizer from when ``tokenizer`` is not
            given and a local source ships none (its directory, and for a checkpoint its run
            directory, hold no tokenizer files); a sweep's ``--tokenizer``.

    Returns:
        The model in eval mode, its tokenizer and its ``ModelInfo``.
    """
    dt = resolve_dtype(dtype)
    check_device_usable(device, dt)
    if not isinstance(source, str | os.PathLike):
        given = [n for n, v in (("revision", revision), ("checkpoint", checkpoint),
                                ("gguf_file", gguf_file)) if v is not None]
        if given:
            raise ScalelensError(f"{', '.join(given)} cannot apply to an in-memory "
                                 f"{type(source).__name__}; load that checkpoint from its path or hub id")
        return _from_object(source, tokenizer, device, dt, attn_implementation, cache_dir)
    rev = checkpoint_revision(revision, checkpoint)
    resolved = resolve_source(os.fspath(source), rev, gguf_file)
    if resolved.kind == "hub" and checkpoint is not None and revision is None:
        resolved = _hub_step(resolved, cache_dir)
    if tokenizer is None and default_tokenizer is not None and not ships_tokenizer(resolved):
        tokenizer = default_tokenizer
    return _from_disk(resolved, os.fspath(source), cache_dir, tokenizer, device, dt, attn_implementation)


def _hub_step(resolved: ResolvedSource, cache_dir: Any) -> ResolvedSource:
    """``checkpoint=N`` of a hub id: the revision the repo names step N by (``global_stepN``)."""
    assert resolved.step is not None  # the sugar's step<N>
    cache = None if cache_dir is None else os.fspath(cache_dir)
    named = step_revision(resolved.location, resolved.step, cache)
    return replace(resolved, revision=named, step=parse_step(named))


def _hub_options(cache_dir: Any) -> dict[str, Any]:
    """Where the hub cache is, and whether to stay in it (``HF_HUB_OFFLINE``)."""
    return {"cache_dir": os.fspath(cache_dir) if cache_dir is not None else None,
            "local_files_only": is_offline()}


def _hub_kwargs(resolved: ResolvedSource, cache_dir: Any, own_tokenizer: bool) -> dict[str, Any]:
    """``from_pretrained`` options for a hub source: its revision, and whether to stay in the cache.

    See ``use_cache_only``: offline, or with the hub unreachable, a revision must be
    fully cached (its tokenizer too where it is the ``own_tokenizer``).
    """
    if resolved.kind == "hub" or (resolved.kind == "gguf" and not Path(resolved.location).is_dir()):
        local = use_cache_only(resolved.location, resolved.revision or "main", cache_dir,
                               resolved.gguf_file, tokenizer=own_tokenizer)
        return {"revision": resolved.revision, **_hub_options(cache_dir), "local_files_only": local}
    return {}


def _from_disk(
    resolved: ResolvedSource,
    source: str,
    cache_dir: Any,
    tokenizer: Any,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    attn: str | None,
) -> LoadedModel:
    kwargs = _hub_kwargs(resolved, cache_dir, own_tokenizer=tokenizer is None)
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
        if Path(resolved.location).is_dir():
            check_gguf_readable(Path(resolved.location) / resolved.gguf_file)
    config = _load_config(resolved, kwargs, cache_dir)
    check_architecture(config)
    tok = _load_tokenizer(tokenizer, resolved, kwargs, config.get_text_config().vocab_size, cache_dir)
    model = _load_weights(resolved, config, kwargs, cache_dir, device, dtype, attn)
    if resolved.gguf_file and Path(resolved.location).is_dir():
        source = str(Path(resolved.location) / resolved.gguf_file)
    if Path(source).expanduser().exists():  # a path: one spelling, whatever the working directory
        source = str(Path(source).expanduser().resolve())
    info = _info(model, resolved.name, source, resolved.kind, resolved.revision, resolved.step)
    return LoadedModel(model=model.eval(), tokenizer=tok, info=info)


def _load_config(resolved: ResolvedSource, kwargs: dict[str, Any], cache_dir: Any) -> Any:
    try:
        config = AutoConfig.from_pretrained(resolved.location, **kwargs)
        return _fill_gguf_gaps(config) if resolved.gguf_file else config
    except ValueError as exc:
        if any(k in str(exc) for k in ("model_type", "model type", "Unrecognized")):
            raise ScalelensError(
                f"unsupported architecture in {resolved.location}: transformers does not know "
                "its model_type; load a decoder-only causal LM"
            ) from exc
        raise _failure(resolved, cache_dir, exc) from exc
    except OSError as exc:
        raise _failure(resolved, cache_dir, exc) from exc


def _fill_gguf_gaps(config: PretrainedConfig) -> PretrainedConfig:
    """Settings transformers reads from a GGUF file under names its model class ignores.

    A GPT-2 GGUF's context length lands in ``n_ctx`` and its feed-forward width in
    ``feed_forward_length``, leaving ``n_positions`` 1024 and ``n_inner`` 4 * ``n_embd``: the
    weights of any other GPT-2 would not fit the model built from that config.
    """
    if config.model_type != "gpt2":
        return config
    if getattr(config, "n_ctx", None):
        config.n_positions = int(config.n_ctx)
    width = getattr(config, "feed_forward_length", None)
    if width and int(width) != 4 * config.n_embd:
        config.n_inner = int(width)
    return config


def check_gguf_readable(file: Path) -> None:
    """One error naming a local GGUF file that is cut short or not GGUF at all.

    gguf's reader otherwise fails inside transformers with a ``struct.error`` (a file cut in
    its header) or a ``ValueError`` naming neither the file nor the problem.
    """
    from gguf import GGUFReader

    try:
        GGUFReader(file)
    except Exception as exc:  # any failure to parse the bytes is a bad file (struct, ValueError, OSError...)
        detail = first_line(exc)
        raise ScalelensError(f"{file} is not a readable GGUF file (truncated or corrupt: {detail}); "
                             "export or download it again") from exc


def check_device_usable(device: str | torch.device | None, dtype: torch.dtype | None = None) -> None:
    """One clear error for a device (and dtype on it) this machine cannot use.

    torch would otherwise assert or crash later, after the model is loaded.
    """
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ScalelensError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise ScalelensError(f"device {device}: scalelens runs on cpu or cuda[:N]")
    if dev.type == "cpu":
        return
    if not torch.cuda.is_available():
        raise ScalelensError(f"device {device} asked for but CUDA is not available; use cpu")
    count = torch.cuda.device_count()
    if (dev.index or 0) >= count:
        raise ScalelensError(f"device {device}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
    if dtype == torch.bfloat16 and not bf16_supported(dev.index or 0):
        raise ScalelensError(f"the GPU {device} does not support bfloat16; use float16 (or float32)")


def bf16_supported(index: int) -> bool:
    """Whether GPU ``index`` (not merely the current one) can run bfloat16."""
    with torch.cuda.device(index):
        return bool(torch.cuda.is_bf16_supported())


def _failure(resolved: ResolvedSource, cache_dir: Any, exc: Exception) -> ScalelensError:
    if resolved.kind in ("hub", "gguf") and not Path(resolved.location).is_dir():
        return explain_failure(resolved.location, resolved.revision or "main", cache_dir, exc)
    detail = first_line(exc)
    where = _named(resolved)
    return ScalelensError(f"could not load {where}: {detail}")


def _load_weights(
    resolved: ResolvedSource,
    config: PretrainedConfig,
    kwargs: dict[str, Any],
    cache_dir: Any,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    attn: str | None,
) -> PreTrainedModel:
    target = torch.device(device or "cpu")
    placement = {"device_map": str(target)} if target.type != "cpu" else {}
    try:
        with quiet_hf_progress(), quiet_load_report():
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                resolved.location,
                config=config,
                dtype=dtype or torch.float32,
                attn_implementation=attn,
                ignore_mismatched_sizes=True,  # refused below, in one line naming a weight
                output_loading_info=True,
                **placement,
                **kwargs,
            )
        model, loading = loaded  # (model, loading info) with output_loading_info
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated/corrupt file
        if "attention implementation" in str(exc):
            raise ScalelensError(
                f"{config.model_type} does not support attn_implementation={attn!r}; "
                "use attn_implementation='eager'"
            ) from exc
        raise _failure(resolved, cache_dir, exc) from exc
    _check_loading(resolved, loading)
    if not placement:
        model.to(target)  # type: ignore[arg-type]  # in place
    return model


def _named(resolved: ResolvedSource) -> str | Path:
    """What error lines name for ``resolved``: the GGUF file itself, else its location."""
    return Path(resolved.location) / resolved.gguf_file if resolved.gguf_file else resolved.location


def _check_loading(resolved: ResolvedSource, loading: dict[str, Any]) -> None:
    """Refuse weights whose shapes differ from the config's; warn of weights left random.

    transformers' own multi-line load report (silenced by ``quiet_load_report``) would
    otherwise end in a RuntimeError for the first, and only warn of the second.
    """
    where = _named(resolved)
    mismatched = sorted(loading.get("mismatched_keys") or [])
    if mismatched:
        key, stored, wanted = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ScalelensError(
            f"could not load {where}: its weights do not match its config: {key} is {tuple(stored)} in the "
            f"checkpoint, {tuple(wanted)} in the config{more}; load the config saved with these weights")
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        warnings.warn(f"{where}: {len(missing)} weight(s) not in the checkpoint were left randomly "
                      f"initialised: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}",
                      ScalelensWarning, stacklevel=4)


def _load_tokenizer(
    tokenizer: Any, resolved: ResolvedSource, kwargs: dict[str, Any], vocab_size: int, cache_dir: Any = None
) -> PreTrainedTokenizerBase:
    """The user's tokenizer object, or one loaded from ``tokenizer`` (a path/id) or the source.

    transformers 5 builds an *empty* tokenizer for a directory without tokenizer
    files; that, and any tokenizer far smaller than the embedding, is refused. A
    checkpoint directory without one uses its run's (an HF Trainer saves the tokenizer
    beside its ``checkpoint-N`` directories when it is not given one).
    """
    if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    if tokenizer is None:  # the source's own, with the source's loading options
        return _tokenizer_at(_checkpoint_tokenizer(resolved), kwargs, vocab_size)
    return load_tokenizer(tokenizer, vocab_size, cache_dir)


def load_tokenizer(location: str | os.PathLike[str], vocab_size: int = 0,
                   cache_dir: Any = None) -> PreTrainedTokenizerBase:
    """The tokenizer at a directory or hub id (``main``).

    As for a model, a hub id comes from the local hub cache alone, at once, when
    ``HF_HUB_OFFLINE`` is set or the hub cannot be reached (see ``use_cache_only``).

    Raises:
        ScalelensError: no tokenizer there, or one with under half of ``vocab_size`` tokens.
    """
    location = os.fspath(location)
    extra = _hub_options(cache_dir)
    if not Path(location).exists() and looks_like_hub_id(location):
        extra["local_files_only"] = use_cache_only(location, "main", cache_dir, model=False)
    return _tokenizer_at(location, extra, vocab_size)


def ships_tokenizer(resolved: ResolvedSource) -> bool:
    """Whether a source has a tokenizer of its own: always assumed for hub and GGUF sources."""
    if resolved.gguf_file or not Path(resolved.location).is_dir():
        return True
    return has_tokenizer_files(Path(_checkpoint_tokenizer(resolved)))


def _checkpoint_tokenizer(resolved: ResolvedSource) -> str:
    """Where the source's tokenizer is: its directory, or a checkpoint's run directory."""
    folder = Path(resolved.location)
    if resolved.kind == "suite" and not has_tokenizer_files(folder) and has_tokenizer_files(folder.parent):
        return str(folder.parent)
    return resolved.location


def _tokenizer_at(location: str, extra: dict[str, Any], vocab_size: int) -> PreTrainedTokenizerBase:
    """The tokenizer at a directory or hub id; refused when missing, empty or far too small."""
    folder = Path(location)
    has_files = not folder.is_dir() or bool(extra.get("gguf_file"))
    has_files = has_files or has_tokenizer_files(folder)
    try:
        tok = AutoTokenizer.from_pretrained(location, **extra) if has_files else None
    except (OSError, ValueError, TypeError) as exc:
        raise _no_tokenizer(location, type(exc).__name__) from exc
    if tok is None or len(tok) < vocab_size // 2:
        raise _no_tokenizer(location, "no tokenizer files" if tok is None else f"{len(tok)} tokens")
    return tok


def _no_tokenizer(location: str, why: str) -> ScalelensError:
    return ScalelensError(f"no usable tokenizer at {location} ({why}); pass tokenizer=... "
                          "(on the command line --tokenizer DIR_OR_HUB_ID)")


def _from_object(
    obj: Any,
    tokenizer: Any,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    attn: str | None,
    cache_dir: Any = None,
) -> LoadedModel:
    model, own_tokenizer, kind = unwrap(obj)
    check_architecture(model.config)
    tok = tokenizer if tokenizer is not None else own_tokenizer
    if tok is None or isinstance(tok, str | os.PathLike):
        tok = _memory_tokenizer(model, tok, cache_dir)
    if attn is not None and model.config._attn_implementation != attn:
        try:
            model.set_attn_implementation(attn)
        except ValueError as exc:
            raise ScalelensError(
                f"{model.config.model_type} does not support attn_implementation={attn!r}; "
                "use attn_implementation='eager'"
            ) from exc
    if device is not None:
        model.to(torch.device(device))  # type: ignore[arg-type]
    if dtype is not None:
        model.to(dtype)  # type: ignore[arg-type]
    name_or_path = str(getattr(model.config, "_name_or_path", "") or "")
    name = Path(name_or_path).name or type(model).__name__
    source = name_or_path or "<in-memory>"
    return LoadedModel(model.eval(), tok, _info(model, name, source, kind, None, None))


def _memory_tokenizer(model: PreTrainedModel, where: Any, cache_dir: Any = None) -> PreTrainedTokenizerBase:
    """The tokenizer at ``where`` (a directory or hub id), else in the model's own directory."""
    vocab = model.config.get_text_config().vocab_size
    if where is not None:
        return _tokenizer_at(os.fspath(where), _hub_options(cache_dir), vocab)
    location = model.config._name_or_path
    if location and Path(location).is_dir():
        return _tokenizer_at(location, {}, vocab)
    raise ScalelensError(f"in-memory {type(model).__name__} came without a tokenizer; pass tokenizer=...")


def _info(
    model: PreTrainedModel,
    name: str,
    source: str,
    kind: str,
    revision: str | None,
    step: int | None,
) -> ModelInfo:
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    attn = str(getattr(model.config, "_attn_implementation", None) or "eager")
    return describe(
        model.config,
        name=name,
        source=source,
        source_kind=kind,
        revision=revision,
        step=step,
        dtype=dtype,
        attn_implementation=attn,
    )
