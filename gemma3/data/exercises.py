"""Rendered people exercising: a procedural figure doing squats, push-ups, jumping jacks, lunges and planks, each with
correct form and with named form errors, and coach feedback sentences in QEVD's style.

A figure is a skeleton in body units (standing height about 1, y up, feet on the floor at y = 0) posed by one
function per exercise from the repetition's progress ``d`` (0 at the top of a repetition, 1 at its bottom) and the
form being shown; it is drawn as anti-aliased capsules (limbs, torso) and a disc (head). What varies per person
and clip: body proportions and limb thickness, skin and clothing colours, camera distance, roll and yaw, where the
figure stands and which way it faces, the background (a wall gradient, a floor, noise, a few dark blocks), the
repetition's speed and its phase at the first frame. Everything comes from the numpy generator passed in, so the
same seed gives the same pixels.

Form errors change the pose by amounts a 64-pixel frame shows (a hip 7 % of the body height below the line of a
push-up, a squat that stops a third of the way down): the model has to see them, not guess them.

Feedback: each (exercise, form) has several phrasings (``PHRASES``), all ``"<exercise> - <sentence>"`` as QEVD's
``labels_descriptive`` are, so METEOR and ROUGE-L measure the wording; `label_of` maps any reply back to the
nearest form label (``"<exercise> - <form>"``, QEVD's ``labels``) for the form-error accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gemma3.utils.text import nearest, normalize

GOOD = "good form"
# exercise -> its forms: correct form first, then the named errors
FORMS: dict[str, tuple[str, ...]] = {
    "squats": (GOOD, "shallow depth", "knees caving in"),
    "push-ups": (GOOD, "hips sagging", "not going low enough"),
    "jumping jacks": (GOOD, "arms not raised overhead", "feet not apart"),
    "lunges": (GOOD, "torso leaning forward", "back knee not low enough"),
    "plank": (GOOD, "hips sagging", "hips too high"),
}
EXERCISES = tuple(FORMS)
# Standing between two exercises: a label of its own, so a stream can tell "nothing to say" from an exercise (the
# coach is silent while it lasts).
REST, REST_FORM = "rest", "getting ready"

PHRASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("squats", GOOD): (
        "great depth, keep your chest up like that",
        "nice squats, knees tracking over the toes",
        "good form, keep sitting back into your heels",
    ),
    ("squats", "shallow depth"): (
        "go deeper, get your hips down to your knees",
        "you are cutting the squat short, sit lower",
        "not deep enough, break parallel on each rep",
    ),
    ("squats", "knees caving in"): (
        "push your knees out, they are caving in",
        "keep your knees over your toes, not inward",
        "your knees collapse inward, drive them apart",
    ),
    ("push-ups", GOOD): (
        "great push-ups, your body is in one straight line",
        "nice depth, keep that core tight",
        "good form, chest all the way down each time",
    ),
    ("push-ups", "hips sagging"): (
        "your hips are sagging, squeeze your glutes",
        "lift your hips, keep a straight line",
        "do not let your lower back drop, brace your core",
    ),
    ("push-ups", "not going low enough"): (
        "go lower, bring your chest to the floor",
        "you are only doing half reps, bend your arms more",
        "not low enough, lower until your elbows reach ninety degrees",
    ),
    ("jumping jacks", GOOD): (
        "great jumping jacks, full range of motion",
        "nice rhythm, arms all the way up",
        "good form, keep jumping wide like that",
    ),
    ("jumping jacks", "arms not raised overhead"): (
        "bring your arms all the way over your head",
        "your arms stop at shoulder height, reach higher",
        "raise your hands above your head on every jump",
    ),
    ("jumping jacks", "feet not apart"): (
        "jump your feet wider apart",
        "your feet stay too close together, step them out",
        "spread your legs more on each jump",
    ),
    ("lunges", GOOD): (
        "great lunges, torso nice and upright",
        "good depth, back knee close to the floor",
        "nice form, keep stepping with control",
    ),
    ("lunges", "torso leaning forward"): (
        "keep your chest up, you are leaning forward",
        "stay upright, do not tip your torso over the knee",
        "your upper body leans too far forward, lift your chest",
    ),
    ("lunges", "back knee not low enough"): (
        "drop your back knee closer to the floor",
        "go deeper into the lunge",
        "lunge lower, both knees should bend to ninety degrees",
    ),
    ("plank", GOOD): (
        "great plank, hold that straight line",
        "good form, keep breathing and hold",
        "nice plank, your back is flat",
    ),
    ("plank", "hips sagging"): (
        "your hips are dropping, lift them up",
        "do not let your hips sag, tighten your core",
        "raise your hips to keep your body straight",
    ),
    ("plank", "hips too high"): (
        "lower your hips, you are piking up",
        "your hips are too high, bring them in line",
        "drop your hips a little, keep a flat back",
    ),
    (REST, REST_FORM): (
        "take a breath, the next exercise is coming up",
        "shake it out and get ready",
        "rest for a moment and get ready",
    ),
}


def label(exercise: str, form: str) -> str:
    """QEVD's ``labels`` style: ``"squats - shallow depth"``."""
    return f"{exercise} - {form}"


def all_labels() -> list[str]:
    """Every (exercise, form) label, exercises in order, correct form first; the rest label last."""
    return [label(e, f) for e, forms in FORMS.items() for f in forms] + [label(REST, REST_FORM)]


def feedback(exercise: str, form: str, rng: np.random.Generator) -> str:
    """One phrasing of the feedback for (exercise, form), ``"<exercise> - <sentence>"`` (QEVD's ``labels_descriptive``
    style)."""
    options = PHRASES[(exercise, form)]
    return f"{exercise} - {options[int(rng.integers(len(options)))]}"


def _tokens(text: str) -> list[str]:
    return normalize(text).split()


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _lcs_f(a: Sequence[str], b: Sequence[str]) -> float:
    """LCS F-measure of two word lists (ROUGE-L's, equal weights)."""
    return 2 * _lcs(a, b) / (len(a) + len(b))


# every phrasing, as normalised words, -> its form label (tokenised once: label_of runs for every stream window)
_PHRASE_WORDS: dict[tuple[str, ...], str] = {}
for (_exercise, _form), _options in PHRASES.items():
    for _option in _options:
        _PHRASE_WORDS.setdefault(tuple(_tokens(f"{_exercise} - {_option}")), label(_exercise, _form))


def label_of(reply: str) -> str | None:
    """The form label (``"<exercise> - <form>"``) whose phrasing is nearest to ``reply``: an exact phrasing, else the
    highest LCS F-measure over the normalised words (ROUGE-L's); None for an empty reply."""
    words = tuple(_tokens(reply))
    if not words:
        return None
    return nearest(words, _PHRASE_WORDS, _lcs_f)


# ---------------------------------------------------------------- the figure


@dataclass(frozen=True)
class Body:
    """Segment lengths and thickness (body units) and colours (RGB in 0..1) of one person."""

    head: float
    torso: float
    thigh: float
    shin: float
    upper_arm: float
    forearm: float
    shoulder: float  # half width
    hip: float  # half width
    limb: float  # limb radius
    skin: tuple[float, float, float]
    shirt: tuple[float, float, float]
    pants: tuple[float, float, float]

    @classmethod
    def random(cls, rng: np.random.Generator) -> Body:
        k = rng.uniform(0.9, 1.1, 6)  # proportions
        skin = tuple(np.array([0.95, 0.78, 0.62]) * rng.uniform(0.55, 1.0))
        return cls(head=0.065 * k[0], torso=0.30 * k[1], thigh=0.25 * k[2], shin=0.25 * k[2] * k[3] ** 0.3,
                   upper_arm=0.17 * k[4], forearm=0.16 * k[4], shoulder=0.09 * k[5], hip=0.065 * k[5],
                   limb=0.028 * rng.uniform(0.8, 1.25), skin=skin, shirt=_bright(rng), pants=_bright(rng))  # fmt: skip


def _bright(rng: np.random.Generator) -> tuple[float, float, float]:
    c = rng.uniform(0.0, 1.0, 3)
    c[int(rng.integers(3))] = 1.0
    return tuple(c * rng.uniform(0.6, 1.0))


Point = tuple[float, float]
# a drawn part: (from, to, radius, colour); from == to draws a disc
Part = tuple[Point, Point, float, tuple[float, float, float]]


def _ik(a: Point, b: Point, l1: float, l2: float, bend: float) -> Point:
    """The middle joint of a two-segment limb from ``a`` to ``b`` (lengths l1, l2), bent to the side of ``bend`` (+1:
    to the left of a->b, -1: to the right); a straight limb when b is out of reach."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    dist = max(1e-6, math.hypot(dx, dy))
    dist_c = min(dist, l1 + l2 - 1e-6)
    along = (l1**2 - l2**2 + dist_c**2) / (2 * dist_c)
    off = math.sqrt(max(0.0, l1**2 - along**2))
    ux, uy = dx / dist, dy / dist
    return (a[0] + ux * along - bend * uy * off, a[1] + uy * along + bend * ux * off)


def _toward(a: Point, angle: float, length: float) -> Point:
    """``length`` from ``a`` at ``angle`` (radians, 0 = +x, counter-clockwise)."""
    return (a[0] + length * math.cos(angle), a[1] + length * math.sin(angle))


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _limb(b: Body, a: Point, m: Point, c: Point, top, bottom, shade: float = 1.0) -> list[Part]:
    top, bottom = tuple(np.array(top) * shade), tuple(np.array(bottom) * shade)
    return [(a, m, b.limb * 1.15, top), (m, c, b.limb, bottom)]


def _dim(c, f: float = 0.7):
    return tuple(np.array(c) * f)


def pose_squat(b: Body, d: float, form: str) -> list[Part]:
    """Front view."""
    drop = {"shallow depth": 0.09}.get(form, 0.25) * d
    knee_dx = {"knees caving in": -0.075}.get(form, 0.035) * d
    leg = b.thigh + b.shin
    pelvis_y = leg + 0.02 - drop
    parts: list[Part] = []
    for s in (-1, 1):
        ankle = (s * (b.hip + 0.035), 0.03)
        knee = (s * (b.hip + 0.035 + knee_dx), 0.03 + b.shin * (1 - 0.12 * d))
        hip = (s * b.hip, pelvis_y)
        parts += _limb(b, hip, knee, ankle, b.pants, b.pants)
        parts.append((ankle, (s * (b.hip + 0.06), 0.01), b.limb * 0.8, (0.15, 0.15, 0.15)))
    neck = (0.0, pelvis_y + b.torso * (1 - 0.22 * d))
    parts.append(((0.0, pelvis_y), neck, b.hip * 1.1, b.shirt))
    for s in (-1, 1):
        shoulder = (s * b.shoulder, neck[1] - 0.03)
        elbow = (s * (b.shoulder + 0.02), shoulder[1] - 0.10)
        hand = (s * 0.03, shoulder[1] - 0.06)
        parts += _limb(b, shoulder, elbow, hand, b.shirt, b.skin)
    parts.append(((0.0, neck[1] + b.head * 1.2),) * 2 + (b.head, b.skin))
    return parts


def pose_jumping_jack(b: Body, d: float, form: str) -> list[Part]:
    """Front view."""
    raise_to = {"arms not raised overhead": 0.45}.get(form, 0.95) * math.pi * d
    spread = {"feet not apart": 0.025}.get(form, 0.17) * d
    lift = 0.035 * math.sin(math.pi * d)
    leg = b.thigh + b.shin
    pelvis_y = leg + 0.02 + lift - 0.02 * d
    parts: list[Part] = []
    for s in (-1, 1):
        hip = (s * b.hip, pelvis_y)
        ankle = (s * (b.hip + 0.01 + spread), 0.03 + lift)
        parts += _limb(b, hip, _lerp(hip, ankle, 0.5), ankle, b.pants, b.pants)
    neck = (0.0, pelvis_y + b.torso)
    parts.append(((0.0, pelvis_y), neck, b.hip * 1.1, b.shirt))
    for s in (-1, 1):
        shoulder = (s * b.shoulder, neck[1] - 0.03)
        angle = -math.pi / 2 + s * (0.12 + raise_to)  # from hanging down, outwards and up
        elbow = _toward(shoulder, angle, b.upper_arm)
        hand = _toward(elbow, angle + s * 0.1, b.forearm)
        parts += _limb(b, shoulder, elbow, hand, b.shirt, b.skin)
    parts.append(((0.0, neck[1] + b.head * 1.2),) * 2 + (b.head, b.skin))
    return parts


def _body_line(b: Body, ankle: Point, shoulder: Point, hip_offset: float) -> tuple[Point, Point]:
    """Knee and hip on the line ankle -> shoulder, the hip moved up (+) or down (-) by ``hip_offset``."""
    f = (b.shin + b.thigh) / (b.shin + b.thigh + b.torso)
    hip = _lerp(ankle, shoulder, f)
    hip = (hip[0], hip[1] + hip_offset)
    return _lerp(ankle, hip, 0.5), hip


def _side_head(b: Body, hip: Point, shoulder: Point) -> Part:
    dx, dy = shoulder[0] - hip[0], shoulder[1] - hip[1]
    n = math.hypot(dx, dy)
    centre = (shoulder[0] + dx / n * b.head * 1.5, shoulder[1] + dy / n * b.head * 1.5 + b.head * 0.3)
    return (centre, centre, b.head, b.skin)


def _prone(b: Body, h: float, hip_offset: float, arm: Callable[[Point], tuple[Point, Point]]) -> list[Part]:
    """A body held straight from the ankle on the floor to the shoulder at height ``h`` (side view, facing +x), the
    hip moved by ``hip_offset``; ``arm(shoulder)`` places the elbow and the hand."""
    ankle = (0.0, 0.035)
    length = b.shin + b.thigh + b.torso
    shoulder = (math.sqrt(max(1e-6, length**2 - (h - ankle[1]) ** 2)), h)
    knee, hip = _body_line(b, ankle, shoulder, hip_offset)
    elbow, hand = arm(shoulder)
    parts = _limb(b, hip, knee, ankle, b.pants, b.pants)
    parts.append((hip, shoulder, b.hip * 0.9, b.shirt))
    parts += _limb(b, shoulder, elbow, hand, b.shirt, b.skin)
    parts.append(_side_head(b, hip, shoulder))
    return parts


def pose_push_up(b: Body, d: float, form: str) -> list[Part]:
    """Side view, facing +x."""
    depth = {"not going low enough": 0.16}.get(form, 0.55)
    h = (b.upper_arm + b.forearm) * (1 - depth * d) + 0.02
    sag = {"hips sagging": -0.075 - 0.02 * d}.get(form, 0.0)

    def arm(shoulder: Point) -> tuple[Point, Point]:
        hand = (shoulder[0], 0.01)
        return _ik(shoulder, hand, b.upper_arm, b.forearm, bend=-1), hand  # elbow pointing back to the feet

    return _prone(b, h, sag, arm)


def pose_plank(b: Body, d: float, form: str) -> list[Part]:
    """Elbow plank, side view, facing +x; ``d`` only breathes."""
    offset = {"hips sagging": -0.07, "hips too high": 0.09}.get(form, 0.0)

    def arm(shoulder: Point) -> tuple[Point, Point]:
        return (shoulder[0], 0.03), (shoulder[0] + b.forearm, 0.025)

    return _prone(b, b.upper_arm + 0.03 + 0.008 * d, offset, arm)


def pose_lunge(b: Body, d: float, form: str) -> list[Part]:
    """Side view, facing +x: front foot ahead, back foot on its toes behind."""
    depth = {"back knee not low enough": 0.40}.get(form, 1.0)
    lean = {"torso leaning forward": 0.62}.get(form, 0.08) * d
    leg = b.thigh + b.shin
    front, back = (0.20, 0.03), (-0.22, 0.05)
    top = math.sqrt(max(1e-6, leg**2 - 0.21**2)) * 0.985
    pelvis = (-0.01, top - depth * d * (top - b.shin - 0.02))
    parts: list[Part] = []
    knee_b = _ik(pelvis, back, b.thigh, b.shin, bend=1)
    parts += _limb(b, pelvis, knee_b, back, b.pants, b.pants, shade=0.7)
    knee_f = _ik(pelvis, front, b.thigh, b.shin, bend=1)
    parts += _limb(b, pelvis, knee_f, front, b.pants, b.pants)
    parts.append((front, (front[0] + 0.05, 0.01), b.limb * 0.8, (0.15, 0.15, 0.15)))
    neck = _toward(pelvis, math.pi / 2 - lean, b.torso)
    parts.append((pelvis, neck, b.hip * 0.9, b.shirt))
    elbow = _toward(neck, -math.pi / 2 - 0.25 - lean * 0.5, b.upper_arm)
    parts += _limb(b, neck, elbow, _lerp(pelvis, neck, 0.25), b.shirt, b.skin)
    parts.append(_side_head(b, pelvis, neck))
    return parts


POSES: dict[str, Callable[[Body, float, str], list[Part]]] = {
    "squats": pose_squat,
    "push-ups": pose_push_up,
    "jumping jacks": pose_jumping_jack,
    "lunges": pose_lunge,
    "plank": pose_plank,
}


# ---------------------------------------------------------------- the camera and the picture


@dataclass(frozen=True)
class Camera:
    """Body units -> pixels: ``scale`` pixels per unit, the feet's centre at (x0, floor), rolled and squashed in x
    (yaw), mirrored when facing left."""

    size: int
    scale: float
    x0: float
    floor: float
    roll: float
    yaw: float
    mirror: bool

    @classmethod
    def random(cls, rng: np.random.Generator, size: int, wide: bool) -> Camera:
        scale = size * (rng.uniform(0.62, 0.78) if wide else rng.uniform(0.66, 0.86))
        return cls(size=size, scale=scale, x0=0.0, floor=size * rng.uniform(0.84, 0.93),
                   roll=rng.uniform(-0.08, 0.08), yaw=rng.uniform(0.8, 1.0), mirror=bool(rng.integers(2)))  # fmt: skip

    def project(self, p: Point) -> Point:
        x, y = (-p[0] if self.mirror else p[0]) * self.yaw, p[1]
        c, s = math.cos(self.roll), math.sin(self.roll)
        return (self.x0 + self.scale * (c * x - s * y), self.floor - self.scale * (s * x + c * y))


def background(rng: np.random.Generator, size: int, floor: float) -> np.ndarray:
    """A room: a wall gradient, a floor from ``floor`` down, soft noise and a few dark blocks. [S, S, 3] in 0..1."""
    wall_a, wall_b = rng.uniform(0.05, 0.35, 3), rng.uniform(0.05, 0.35, 3)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    img = np.broadcast_to(wall_a * (1 - ramp) + wall_b * ramp, (size, size, 3)).copy()
    for _ in range(int(rng.integers(0, 3))):  # furniture, doors
        x, w = rng.integers(0, size), rng.integers(size // 10, size // 3)
        top = rng.integers(size // 6, size // 2)
        img[top : int(floor), x : x + w] *= rng.uniform(0.4, 0.8)
    img[int(floor) :] = rng.uniform(0.1, 0.4, 3)
    img += rng.normal(0, 0.015, img.shape)
    return np.clip(img, 0, 0.45).astype(np.float32)


def draw(img: np.ndarray, parts: list[Part], cam: Camera) -> None:
    """Paint the parts in order (anti-aliased capsules and discs) onto ``img`` [S, S, 3] in place."""
    size = img.shape[0]
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5
    for a, b, radius, colour in parts:
        (ax, ay), (bx, by) = cam.project(a), cam.project(b)
        r = max(0.6, radius * cam.scale)
        dx, dy = bx - ax, by - ay
        n2 = dx * dx + dy * dy
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / n2, 0, 1) if n2 > 1e-9 else 0.0
        dist = np.hypot(xx - (ax + t * dx), yy - (ay + t * dy))
        alpha = np.clip(r - dist + 0.5, 0, 1)[..., None]  # [S, S, 1]
        img *= 1 - alpha
        img += alpha * np.asarray(colour, np.float32)


def _extent(parts_over_time: list[list[Part]]) -> tuple[float, float, float]:
    xs = [p[0] for parts in parts_over_time for a, b, r, _ in parts for p in (a, b)]
    ys = [p[1] + r for parts in parts_over_time for a, b, r, _ in parts for p in (a, b)]
    return min(xs), max(xs), max(ys)


@dataclass(frozen=True)
class Performer:
    """One person in one place: body, camera, room, and the pace of their repetitions."""

    body: Body
    camera: Camera
    room: np.ndarray  # [S, S, 3] float in 0..1
    rep_seconds: float

    @classmethod
    def random(cls, rng: np.random.Generator, size: int, exercise: str, body: Body | None = None) -> Performer:
        """A random place, camera and pace for ``exercise`` (``REST``: standing), for ``body`` or a new person."""
        body = body or Body.random(rng)
        exercise = "jumping jacks" if exercise == REST else exercise  # standing: a jumping jack's first pose
        cam = Camera.random(rng, size, wide=exercise in ("push-ups", "plank", "lunges"))
        # place the figure so every pose of the exercise fits, anywhere the frame leaves room
        probe = [POSES[exercise](body, d, f) for d in (0.0, 0.5, 1.0) for f in FORMS[exercise]]
        lo, hi, top = _extent(probe)
        if cam.mirror:
            lo, hi = -hi, -lo
        span = (hi - lo) * cam.yaw * cam.scale
        slack = max(0.0, size - 4 - span)
        x0 = 2 + rng.uniform(0, slack) - lo * cam.yaw * cam.scale
        floor = min(cam.floor, size - 1.0)
        floor = max(floor, top * cam.scale + 2)  # the head stays in the frame
        cam = Camera(size, cam.scale, x0, floor, cam.roll, cam.yaw, cam.mirror)
        room = background(rng, size, floor)
        return cls(body, cam, room, rep_seconds=float(rng.uniform(1.2, 2.0)))


def depth_at(phase: float) -> float:
    """The repetition's depth at ``phase`` (in repetitions): 0 at the top, 1 at the bottom, smooth."""
    return 0.5 - 0.5 * math.cos(2 * math.pi * phase)


def render_frames(performer: Performer, exercise: str, forms: list[str], fps: float, phase0: float = 0.0) -> np.ndarray:
    """Frames [T, S, S, 3] uint8, one per entry of ``forms`` (the form shown in that frame), at ``fps``, the
    repetition starting ``phase0`` repetitions in."""
    pose = POSES[exercise]
    frames = np.empty((len(forms), performer.camera.size, performer.camera.size, 3), np.uint8)
    for i, form in enumerate(forms):
        d = depth_at(phase0 + i / fps / performer.rep_seconds)
        img = performer.room.copy()
        draw(img, pose(performer.body, d, form), performer.camera)
        frames[i] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return frames


def standing(performer: Performer, frames: int) -> np.ndarray:
    """A figure standing still between exercises: [T, S, S, 3] uint8."""
    img = performer.room.copy()
    draw(img, pose_jumping_jack(performer.body, 0.0, GOOD), performer.camera)
    still = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(still[None], frames, axis=0)
