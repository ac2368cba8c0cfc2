"""The studio's routes: JSON for what the page shows and changes, files for the pictures. Each one is a
call to the engine's public methods; bad input comes back as `{"error": "..."}` with the same one-line
message the command line prints, and nothing half-written."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.core.admin import Face
from bot.core.engine import Engine
from bot.errors import AlreadyImported, BotError, whole_number
from bot.expressions.recipe import DEFAULT_EMOTION_WORDS, check_labels
from bot.personas import Persona, shorter_name
from bot.studio.jobs import RenderJobs

MAX_JSON_BYTES = 256 * 1024  # an edited persona's text; cards and packs have their own limits
MAX_FILENAME = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TooLarge(BotError):
    """An upload past its limit (answered 413)."""


class Api:
    def __init__(self, engine: Engine, jobs: RenderJobs, max_card_bytes: int, max_pack_bytes: int) -> None:
        self.admin = engine.admin
        self.jobs = jobs
        self.max_card_bytes = max_card_bytes
        self.max_pack_bytes = max_pack_bytes

    def routes(self) -> list[web.RouteDef]:
        r = "/api/personas/{slug}"
        return [
            web.get("/api/personas", self.personas),
            web.post("/api/personas", self.import_card),
            web.get(r, self.persona),
            web.put(r, self.edit),
            web.get(r + "/portrait", self.portrait),
            web.put(r + "/portrait", self.set_portrait),
            web.get(r + "/card.png", self.export_card),
            web.get(r + "/face/detect", self.detect),
            web.get(r + "/face/preview", self.preview),
            web.put(r + "/face", self.save_face),
            web.get(r + "/faces", self.faces),
            web.get(r + "/faces/{label}", self.face_image),
            web.post(r + "/renders", self.render),
            web.get(r + "/sheet.png", self.sheet),
            web.get(r + "/sprites.zip", self.export_sprites),
            web.post(r + "/sprites", self.import_sprites),
            web.get("/api/jobs/{id}", self.job),
            web.get("/api/jobs/{id}/events", self.job_events),
            web.get("/api/channels", self.channels),
        ]

    # -- personas ---------------------------------------------------------------------------------------

    async def personas(self, request: web.Request) -> web.Response:
        rows = [
            {"slug": slug, "name": name, "faces": faces, "portrait": faces not in ("no portrait", "")}
            for slug, name, faces in self.admin.persona_overview()
        ]
        return web.json_response({"personas": rows})

    async def persona(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        return web.json_response(self._persona_json(persona))

    async def import_card(self, request: web.Request) -> web.Response:
        """A card file; one already imported answers 409 with the persona it is, until the page says
        `?replace=1` (replace it) or `?id=NEW` (keep both)."""
        name = _filename(request)
        raw = await _body(request, self.max_card_bytes, f"{name}: card file")
        replace = request.query.get("replace") == "1"
        try:
            persona = await self.admin.import_card(raw, name, slug=request.query.get("id"), replace=replace)
        except AlreadyImported as exc:
            error = f"{name} is already imported as '{exc.slug}': replace it, or keep both under a new id"
            return web.json_response({"error": error, "existing": exc.slug}, status=409)
        found = ""
        if self.admin.face_unknown(persona):
            try:
                report = await self.admin.face_region(persona, detect=True)
            except BotError as exc:  # the card is in; only its face could not be looked for
                found = f"its face could not be looked for: {exc}"
            else:
                persona = report.persona
                if report.finding is not None:
                    found = report.finding.describe("drag the box over the face and save it")
        message = f"imported {persona.name} as '{persona.slug}'" + (f"; {found}" if found else "")
        if (short := shorter_name(persona.name)) is not None:
            message += (
                f"; its name reads like a title: a shorter one, like '{short}', in the card's Name box?"
            )
        return web.json_response({"persona": self._persona_json(persona), "message": message})

    async def edit(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        changes = await _json(request)
        if not isinstance(changes, dict):
            raise BotError("send the changes as a JSON object")
        updated = await self.admin.edit_persona(persona, changes)
        return web.json_response({"persona": self._persona_json(updated), "message": "saved"})

    async def portrait(self, request: web.Request) -> web.StreamResponse:
        persona = await self._persona(request)
        path = self.admin.portrait_of(persona)
        if path is None:
            raise web.HTTPNotFound(text=f"{persona.slug} has no portrait")
        return web.FileResponse(path)

    async def set_portrait(self, request: web.Request) -> web.Response:
        """A picture as the persona's portrait (bounded as card uploads are); its face is looked for."""
        persona = await self._persona(request)
        name = _filename(request)
        raw = await _body(request, self.max_card_bytes, f"{name}: portrait")
        report = await self.admin.set_portrait(persona, raw, name)
        found = report.finding.describe("drag the box over the face and save it") if report.finding else ""
        message = f"{report.persona.name}'s portrait saved" + (f"; {found}" if found else "")
        return web.json_response({"persona": self._persona_json(report.persona), "message": message})

    async def export_card(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        spec = request.query.get("spec", "v3")
        if spec not in ("v2", "v3"):
            raise BotError(f"spec must be v2 or v3, not {spec[:20]!r}")
        data = await self.admin.export_card(persona, "v2" if spec == "v2" else "v3")
        return _download(data, f"{persona.slug}-{spec}.png", "image/png")

    # -- the face region --------------------------------------------------------------------------------

    async def detect(self, request: web.Request) -> web.Response:
        """The detected face, proposed: nothing is saved."""
        persona = await self._persona(request)
        report = await self.admin.face_region(persona, detect=True, save=False)
        finding = report.finding
        box = list(finding.box) if finding is not None and finding.box is not None else None
        strong = finding is not None and finding.strong
        how = "drag the box over the face and save it"
        message = finding.describe(how, "the face region stays as it was") if finding is not None else ""
        return web.json_response({"box": box, "strong": strong, "message": message})

    async def preview(self, request: web.Request) -> web.Response:
        """The portrait dimmed outside the mask a render may redraw, for the box being tried (or the
        saved region)."""
        persona = await self._persona(request)
        box = _box(request.query["box"]) if "box" in request.query else None
        report = await self.admin.face_region(persona, box=box, save=False)
        if report.preview is None:
            raise BotError(f"{persona.name} has no face region yet: drag the box over the face")
        return web.Response(body=report.preview, content_type="image/png")

    async def save_face(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        body = await _json(request)
        raw = body.get("box") if isinstance(body, dict) else None
        if not (isinstance(raw, list) and len(raw) == 4 and all(type(v) is int for v in raw)):
            raise BotError("box must be four whole numbers [x, y, width, height]")
        report = await self.admin.face_region(persona, box=(raw[0], raw[1], raw[2], raw[3]))
        where = report.saved.name if report.saved is not None else "its file"
        message = f"face_box = {raw} saved in {where}"
        if report.persona.face_mask:
            message += f" (its face_mask {report.persona.face_mask} still decides what is redrawn)"
        return web.json_response({"persona": self._persona_json(report.persona), "message": message})

    # -- expressions ------------------------------------------------------------------------------------

    async def faces(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        faces = await self.admin.faces(persona)
        return web.json_response({"faces": [_face_json(persona, face) for face in faces]})

    async def face_image(self, request: web.Request) -> web.StreamResponse:
        persona = await self._persona(request)
        label = request.match_info["label"]
        if label not in persona.labels:
            raise web.HTTPNotFound(text=f"{persona.slug} has no label {label[:40]!r}")
        [face] = await self.admin.faces(persona, [label])
        if face.path is None:
            raise web.HTTPNotFound(text=f"{persona.slug} has no face for {label}")
        return web.FileResponse(face.path)

    async def render(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        body = await _json(request)
        body = body if isinstance(body, dict) else {}
        labels = body.get("labels") or []
        if not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
            raise BotError("labels must be a list of label names")
        check_labels(persona, labels)  # before the job starts: the page hears it at once
        job = self.jobs.start(persona, labels, force=bool(body.get("force")))
        return web.json_response(job.snapshot(), status=202)

    async def job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(text="no such render job")
        return web.json_response(job.snapshot())

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the job's state at every change, until it ends."""
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(text="no such render job")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        while True:
            snapshot = job.snapshot()
            await response.write(f"data: {json.dumps(snapshot)}\n\n".encode())
            if snapshot["state"] != "running":
                break
            await self.jobs.changed(job, snapshot["version"])
        await response.write_eof()
        return response

    async def sheet(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        return web.Response(body=await self.admin.contact_sheet(persona), content_type="image/png")

    async def export_sprites(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        return _download(
            await self.admin.sprite_pack(persona), f"{persona.slug}-sprites.zip", "application/zip"
        )

    async def import_sprites(self, request: web.Request) -> web.Response:
        persona = await self._persona(request)
        name = _filename(request)
        raw = await _body(request, self.max_pack_bytes, f"{name}: sprite pack")
        plan = await self.admin.import_sprites(persona, raw, name)
        stored = [f"{src} as {dst}" if src != dst else src for src, dst in plan.stored.items()]
        message = f"imported {len(plan.stored)} sprites: {', '.join(stored) or 'none'}"
        unused = [f"{name}: {why}" for name, why in plan.unused.items()]
        return web.json_response({"message": message, "unused": unused})

    # -- channels ---------------------------------------------------------------------------------------

    async def channels(self, request: web.Request) -> web.Response:
        rows = [
            {
                "id": str(c.channel_id),  # Discord ids exceed what JavaScript numbers hold exactly
                "cast": c.cast,
                "enabled": c.settings.enabled,
                "mode": c.settings.mode,
                "messages": c.messages,
                "last_emotion": c.settings.last_emotion,
                "summary": c.summary,
            }
            for c in await self.admin.channels()
        ]
        return web.json_response({"channels": rows})

    # -- helpers ----------------------------------------------------------------------------------------

    async def _persona(self, request: web.Request) -> Persona:
        return self.admin.persona(request.match_info["slug"])

    def _persona_json(self, persona: Persona) -> dict[str, Any]:
        return {
            "slug": persona.slug,
            "name": persona.name,
            "description": persona.description,
            "greeting": persona.greeting,
            "labels": list(persona.labels),
            "prompts": {label: persona.emotion_prompts.get(label, "") for label in persona.labels},
            "default_prompts": {
                label: DEFAULT_EMOTION_WORDS.get(label, f"{label} expression") for label in persona.labels
            },
            "face_box": list(persona.face_box) if persona.face_box else None,
            "face_mask": persona.face_mask,
            "portrait": self.admin.portrait_of(persona) is not None,
        }


def _face_json(persona: Persona, face: Face) -> dict[str, Any]:
    stamp = int(face.path.stat().st_mtime_ns) if face.path is not None and face.path.exists() else 0
    url = f"/api/personas/{persona.slug}/faces/{face.label}?v={stamp}" if face.path is not None else None
    return {"label": face.label, "kind": face.kind, "url": url}


def _download(data: bytes, name: str, kind: str) -> web.Response:
    return web.Response(
        body=data, content_type=kind, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def _filename(request: web.Request) -> str:
    """The uploaded file's name, for messages and its extension only: never joined to a path."""
    name = Path(request.headers.get("X-Filename", "upload")).name
    return re.sub(r"[^\w.\- ()]", "_", name)[:MAX_FILENAME] or "upload"


def _box(text: str) -> tuple[int, int, int, int]:
    numbers = [whole_number(p) for p in text.split(",")]
    if len(numbers) != 4 or None in numbers:
        raise BotError("box must be four whole numbers: x,y,width,height")
    x, y, w, h = (n for n in numbers if n is not None)
    return (x, y, w, h)


async def _body(request: web.Request, limit: int, what: str) -> bytes:
    """The request's body, refused past `limit` bytes before more than that is read."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"{what} is {request.content_length} bytes, more than the {limit} allowed")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:  # a body sent without its length
            raise TooLarge(f"{what} is more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: web.Request) -> Any:
    raw = await _body(request, MAX_JSON_BYTES, "the request")
    try:
        return json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise BotError("the request is not valid JSON") from None
