"""What a pretrained encoder adapts: the ``adapt`` scopes shared by text and image models.

A body with an ``encoder`` attribute (a ``transformers`` model: :class:`~metafit.models.
text.TextBody`, :class:`~metafit.models.image_encoder.ImageEncoderBody`) takes one of four
scopes; the inner loop adapts, and the outer loop meta-learns, exactly the trainable
parameters, for every algorithm alike:

- ``full``: the whole encoder and the head;
- ``top``: the top ``adapt_layers`` blocks of the encoder's block stack
  (:func:`layer_stack`: transformer layers, or the stages of a ConvNeXt or ResNet), the
  encoder's final normalisation (``layernorm``, ``post_layernorm``: what the pooled
  features come out of) and the head; the rest is frozen;
- ``head``: the head only (the encoder is a frozen feature extractor);
- ``lora``: LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
  Models", rank ``lora_r``, scale ``lora_alpha / r``) on the attention query and value
  projections of every layer, via ``peft``, and the head; the encoder's own weights are
  frozen. Encoders without attention (ConvNeXt, ResNet) are refused with a message naming
  the scopes that apply.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from metafit.models.base import FewShotModel

__all__ = ["AdaptScope", "apply_adapt_scope", "layer_stack", "transformer_layers",
           "LORA_TARGETS"]

AdaptScope = Literal["full", "top", "head", "lora"]

#: Names of attention query and value projections (BERT/ViT/DINOv2, CLIP, DistilBERT).
LORA_TARGETS = frozenset({"query", "value", "q_proj", "v_proj", "q_lin", "v_lin"})
#: Names of the module lists that hold an encoder's blocks.
_STACK_NAMES = frozenset({"layer", "layers", "stages", "blocks", "block"})
#: Direct children of an encoder that normalise the output of its block stack.
_FINAL_NORMS = frozenset({"layernorm", "post_layernorm", "final_layernorm", "norm"})


def layer_stack(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of blocks, top last: the shallowest ``nn.ModuleList`` named
    ``layer``, ``layers``, ``stages``, ``blocks`` or ``block`` (the transformer layers of
    BERT, ViT, DINOv2, CLIP; the stages of ConvNeXt and ResNet, not the blocks inside a
    stage), the longest on a tie; without one, the longest ``nn.ModuleList``."""
    lists = [(name, m) for name, m in encoder.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(encoder).__name__} has no list of layers")
    named = [(name, m) for name, m in lists if name.rsplit(".", 1)[-1] in _STACK_NAMES]
    if named:
        return min(named, key=lambda nm: (nm[0].count("."), -len(nm[1])))[1]
    return max((m for _, m in lists), key=len)


#: The former name of :func:`layer_stack` (text models).
transformer_layers = layer_stack


def apply_adapt_scope(model: FewShotModel, scope: AdaptScope, layers: int = 2,
                      lora_r: int = 8, lora_alpha: int = 16) -> None:
    """Set which parameters train (``requires_grad``); add LoRA adapters for ``lora``.

    Raises:
        ValueError: a body without a pretrained ``encoder``; ``layers`` beyond the stack;
            ``lora`` on an encoder without attention projections; an unknown scope.
    """
    body = model.body
    encoder = getattr(body, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError("adapt scopes other than 'full' are for pretrained encoders "
                         "(model text or image_encoder)")
    if scope == "full":
        encoder.requires_grad_(True)
    elif scope in ("top", "head"):
        encoder.requires_grad_(False)
        if scope == "top":
            stack = layer_stack(encoder)
            if not 1 <= layers <= len(stack):
                raise ValueError(f"adapt_layers={layers}, but the encoder has {len(stack)} "
                                 "layers")
            for layer in stack[len(stack) - layers:]:
                layer.requires_grad_(True)
            for name, child in encoder.named_children():
                if name in _FINAL_NORMS:
                    child.requires_grad_(True)
    elif scope == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        encoder.requires_grad_(False)
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in encoder.named_modules()
                          if isinstance(m, nn.Linear)} & LORA_TARGETS)
        if not targets:
            raise ValueError(f"adapt 'lora' puts adapters on attention query/value "
                             f"projections, and {type(encoder).__name__} has none (a "
                             "convolutional encoder); use adapt top, head or full")
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                            target_modules=targets, bias="none")
        body.encoder = inject_adapter_in_model(config, encoder)
        for name, p in body.encoder.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        raise ValueError(f"unknown adapt scope {scope!r}; use full, top, head or lora")
    model.head.requires_grad_(True)
