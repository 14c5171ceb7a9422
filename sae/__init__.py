"""Sparse autoencoders in JAX: architectures, file formats, interventions and training.

The package is model-agnostic: it reads and writes activations of shape ``[..., d_in]``
and never imports the model code. The model side passes the intervention functions from
``sae.interventions`` to its forward pass at the hook named by ``SAEConfig.hook_name``.
"""

from sae.config import ARCHITECTURES, NORMALIZATIONS, SAEConfig, check_hook_dim
from sae.core import decode, encode, encode_subset, forward, input_scale, pre_activations
from sae.formats import fold_norm_scaling_factor, load_sae, load_saelens, save_saelens
from sae.hub import from_hub
from sae.interventions import (
    FeatureEdit,
    amplify_feature,
    clamp_feature,
    feature_edit,
    make_feature_intervention,
    make_splice_intervention,
    sae_splice_intervention,
    steer_feature,
)
from sae.params import SAEParams, params_from_arrays
from sae.scope_formats import load_gemma_scope, load_llama_scope

__all__ = [
    "ARCHITECTURES",
    "NORMALIZATIONS",
    "FeatureEdit",
    "SAEConfig",
    "SAEParams",
    "amplify_feature",
    "check_hook_dim",
    "clamp_feature",
    "decode",
    "encode",
    "encode_subset",
    "feature_edit",
    "fold_norm_scaling_factor",
    "forward",
    "from_hub",
    "input_scale",
    "load_gemma_scope",
    "load_llama_scope",
    "load_sae",
    "load_saelens",
    "make_feature_intervention",
    "make_splice_intervention",
    "params_from_arrays",
    "pre_activations",
    "sae_splice_intervention",
    "save_saelens",
    "steer_feature",
]
