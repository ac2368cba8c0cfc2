"""Expressions: a persona's face for an emotion, cached on disk.

Order of preference for a face: a hand-made sprite from a sprite pack, a cached render, a face drawn over
the portrait with no model, then the plain portrait; on a render miss the best face at hand is shown
while a fresh render runs in the background on the render worker. Outside the feathered face mask a
render is identical to the portrait (the pipeline's output is composited back through that mask), and
outside its marks so is a drawn face.

Modules: `detect` (finding the face box), `region` (face box and mask, compositing), `drawn` and
`drawn_cache` (faces with no model), `backends` (where a face is inpainted: diffusers in this process,
or the user's ComfyUI or AUTOMATIC1111/Forge server), `service` (what the engine calls: caches, render
worker), `sprites` (packs, SillyTavern names), `sheet` (contact sheets).
Torch and diffusers are imported only when a render needs them; OpenCV only when a face is looked for.
"""

from bot.expressions.backends.diffusers import Renderer, load_pipeline, render_threads
from bot.expressions.recipe import emotion_prompt
from bot.expressions.region import check_face_box, composite, dilate_mask, face_mask, face_preview
from bot.expressions.service import ExpressionImage, ExpressionService
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
