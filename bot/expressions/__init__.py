"""Expressions: redraw only the face of a persona's portrait for an emotion, cached on disk.

Order of preference for a face: a hand-made sprite from a sprite pack, a cached render, then (on a
miss) the best image at hand while a fresh render runs in the background on the render worker.
Outside the feathered face mask the output is identical to the portrait: the pipeline's output is
composited back over the portrait with that mask, so a mask value of 0 always keeps the original pixel.

Modules: `region` (face box and mask, compositing), `pipeline` (loading diffusers, one render),
`service` (what the engine calls: cache, render worker), `sprites` (packs, SillyTavern names),
`sheet` (contact sheets). Torch and diffusers are imported only when a render needs them.
"""

from bot.expressions.pipeline import Renderer, load_pipeline, render_threads
from bot.expressions.region import check_face_box, composite, dilate_mask, face_mask, face_preview
from bot.expressions.service import ExpressionImage, ExpressionService, emotion_prompt
from bot.expressions.sheet import contact_sheet
from bot.expressions.sprites import (
    MAX_PACK_BYTES,
    MAX_PACK_FILES,
    MAX_SPRITE_BYTES,
    SpriteImport,
    plan_sprites,
    sprite_name,
)

__all__ = [
    "MAX_PACK_BYTES",
    "MAX_PACK_FILES",
    "MAX_SPRITE_BYTES",
    "ExpressionImage",
    "ExpressionService",
    "Renderer",
    "SpriteImport",
    "check_face_box",
    "composite",
    "contact_sheet",
    "dilate_mask",
    "emotion_prompt",
    "face_mask",
    "face_preview",
    "load_pipeline",
    "plan_sprites",
    "render_threads",
    "sprite_name",
]
