"""Applying the hardness settings of `KGeluTrainingArguments` to a model before training
(`prepare_hardness`): τ, one θ per site or per channel, and the init profile."""

from __future__ import annotations

import logging

from torch import nn

from ..hardness import DEFAULT_LAMBDA_INIT, DEFAULT_LAMBDA_RANGE, init_lambdas
from ..modeling.module import KGELU
from ..modeling.sites import find_sites, infer_num_channels, require_sites, site_lambda
from .arguments import KGeluTrainingArguments

logger = logging.getLogger(__name__)


def require_trained_sites(model: nn.Module) -> list[tuple[str, KGELU]]:
    """The sites whose θ training acts on (`trained_sites`); a clear error when there are none."""
    return require_sites(model, trained=True, purpose=", so KGeluTrainer has no hardness to train")


def _model_config(model: nn.Module):
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return getattr(model, "config", None)


def _untouched(site: KGELU) -> bool:
    """Whether λ still holds its construction-time value (never trained, loaded or set by hand).

    Compared on λ to float32 precision: the init paths compute θ in slightly different ways."""
    initial = max(getattr(site, "initial_lambda", DEFAULT_LAMBDA_INIT), 1.0 + 1e-6)
    return bool(((site_lambda(site) - initial).abs() <= 1e-6 * initial).all())


def _switch_channels(model: nn.Module, per_channel: bool) -> None:
    """One θ per channel (or per site) at every site, each keeping its mean λ; recorded in the config
    so a saved checkpoint rebuilds the same shapes."""
    if hasattr(model, "get_base_model"):
        raise ValueError(
            "kgelu_per_channel cannot reshape θ inside a PEFT model (the adapter copies are already made): build the "
            "base model per channel first (config kgelu_per_channel=True, or convert_to_kgelu(model, per_channel=True)), "
            "then wrap it"
        )
    for name, site in find_sites(model):
        site.resize_channels(infer_num_channels(model, name) if per_channel else None)
    config = _model_config(model)
    if config is not None:
        config.kgelu_per_channel = per_channel


def prepare_hardness(model: nn.Module, args: KGeluTrainingArguments) -> None:
    """Apply `kgelu_tau` and the hardness init of `args` to `model` (see `KGeluTrainingArguments`)."""
    sites = require_trained_sites(model)
    config = _model_config(model)
    if args.kgelu_per_channel is not None and any(site.per_channel != args.kgelu_per_channel for _, site in sites):
        _switch_channels(model, bool(args.kgelu_per_channel))
        sites = require_trained_sites(model)
    trained = [name for name, site in sites if not _untouched(site)]  # judged before τ rewrites θ
    if args.kgelu_tau is not None:
        for _, site in find_sites(model):  # every copy, so PEFT's original and adapter copy agree
            if site.tau != args.kgelu_tau:
                site.set_tau(args.kgelu_tau)  # keeps λ, rewrites θ
        if config is not None:
            config.kgelu_tau = float(args.kgelu_tau)
    given = any(v is not None for v in (args.kgelu_init, args.kgelu_lambda_init, args.kgelu_lambda_range))
    if args.kgelu_reinit == "never" or (args.kgelu_reinit == "auto" and not given):
        return

    def setting(name, default):
        value = getattr(args, name)
        if value is None and config is not None:
            value = getattr(config, name, None)
        return default if value is None else value

    mode = setting("kgelu_init", "uniform")
    lambda_init = float(setting("kgelu_lambda_init", DEFAULT_LAMBDA_INIT))
    lambda_range = [float(v) for v in setting("kgelu_lambda_range", DEFAULT_LAMBDA_RANGE)]
    if args.kgelu_reinit == "auto" and trained:
        logger.warning(
            "kgelu_init/kgelu_lambda_init/kgelu_lambda_range were not applied: the θ of %d λ-GELU site(s) (e.g. %s) "
            "are not at their initial value (loaded from a trained checkpoint or set by hand), so their learned λ is "
            "kept. Pass kgelu_reinit='always' to re-initialise them anyway.",
            len(trained),
            trained[0],
        )
        return
    for (_, site), lam in zip(sites, init_lambdas(len(sites), mode, lambda_init, lambda_range)):
        site.set_lambda(lam)
        site.initial_lambda = lam
    if config is not None:
        config.kgelu_init, config.kgelu_lambda_init, config.kgelu_lambda_range = mode, lambda_init, lambda_range
