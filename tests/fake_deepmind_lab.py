"""A faithful fake of the `deepmind_lab` Python API, for tests (DMLab itself cannot be
installed here). It mirrors the real module's surface and its strictness:

  Lab(level, observations, config=None, renderer='software', level_cache=None)
  reset(episode=-1, seed=None), step(action, num_steps=1) -> float reward,
  observations() -> dict, is_running(), observation_spec(), action_spec(), num_steps(),
  close(); config values must be strings; actions are np.intc [7] in DMLab's order;
  observations() fails once the episode has ended; hold-out levels need
  allowHoldOutLevels='true'; a level cache's fetch/write are called around compilation.

The dynamics are made up but deterministic: an episode lasts `EPISODE_FRAMES` frames, moving
forward earns 1 per frame, and the frame encodes the seed and the frame count.
"""

import numpy as np

EPISODE_FRAMES = 40
ACTION_NAMES = [
    ("LOOK_LEFT_RIGHT_PIXELS_PER_FRAME", -1024, 1024),
    ("LOOK_DOWN_UP_PIXELS_PER_FRAME", -1024, 1024),
    ("STRAFE_LEFT_RIGHT", -1, 1),
    ("MOVE_BACK_FORWARD", -1, 1),
    ("FIRE", 0, 1),
    ("JUMP", 0, 1),
    ("CROUCH", 0, 1),
]
HOLD_OUT_LEVELS = {"contributed/dmlab30/rooms_collect_good_objects_test",
                   "contributed/dmlab30/rooms_exploit_deferred_effects_test"}
INSTRUCTIONS = ["Pick the red balloon", "Go to the green key", "How many cubes are there"]

# Every Lab created, so tests can inspect what the adapter asked for.
created = []


def _known_level(level):
    from impala_tf.scores import dmlab30_levels  # the real level list
    names = {n for lvl in dmlab30_levels() for n in (lvl.train_level, lvl.test_level)}
    return level.startswith("contributed/dmlab30/") and level.split("/")[-1] in names


class Lab:
    def __init__(self, level, observations, config=None, renderer="software", level_cache=None):
        config = dict(config or {})
        for key, value in config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("Config key and value must be strings")
        if renderer not in ("software", "hardware"):
            raise ValueError(f"renderer must be 'software' or 'hardware', got {renderer!r}")
        if not _known_level(level):
            raise ValueError(f"Failed to open level {level!r}")
        if level in HOLD_OUT_LEVELS and config.get("allowHoldOutLevels") != "true":
            raise RuntimeError(f"Level {level!r} is a hold-out level")
        self.width = int(config.get("width", 320))
        self.height = int(config.get("height", 240))
        spec_names = {s["name"] for s in self.observation_spec()}
        for name in observations:
            if name not in spec_names:
                raise ValueError(f"Unknown observation {name!r}")
        self.level, self.config, self.renderer = level, config, renderer
        self.requested = list(observations)
        self.cache_hit = None
        if level_cache is not None:
            key = f"{level.replace('/', '_')}.pk3"
            pk3_path = f"/tmp/fake_dmlab_{id(self)}.pk3"
            self.cache_hit = bool(level_cache.fetch(key, pk3_path))
            if not self.cache_hit:
                with open(pk3_path, "wb") as f:
                    f.write(b"compiled " + level.encode())
                level_cache.write(key, pk3_path)
        self.seeds, self.actions = [], []
        self._running = False
        self._frames = 0
        self._seed = 0
        created.append(self)

    def observation_spec(self):
        return [
            {"name": "RGB_INTERLEAVED", "shape": (self.height, self.width, 3), "dtype": np.uint8},
            {"name": "RGBD", "shape": (4, self.height, self.width), "dtype": np.uint8},
            {"name": "INSTR", "shape": (), "dtype": str},
        ]

    def action_spec(self):
        return [{"name": n, "min": lo, "max": hi} for n, lo, hi in ACTION_NAMES]

    def reset(self, episode=-1, seed=None):
        self._seed = 0 if seed is None else int(seed)
        self.seeds.append(seed)
        self._frames = 0
        self._running = True
        return True

    def step(self, action, num_steps=1):
        if not isinstance(action, np.ndarray) or action.dtype != np.intc or action.shape != (7,):
            raise ValueError("action must be a numpy array of dtype intc and shape (7,)")
        if not self._running:
            raise RuntimeError("Environment in wrong status to advance")
        for value, (_, lo, hi) in zip(action, ACTION_NAMES):
            if not lo <= value <= hi:
                raise ValueError(f"action value {value} out of range [{lo}, {hi}]")
        self.actions.append(action.copy())
        reward = 0.0
        for _ in range(num_steps):
            reward += 1.0 if action[3] == 1 else 0.0
            self._frames += 1
            if self._frames >= EPISODE_FRAMES:
                self._running = False
                break
        return reward

    def observations(self):
        if not self._running:
            raise RuntimeError("Environment in wrong status to call observations()")
        frame = np.full((self.height, self.width, 3), (self._seed + self._frames) % 256, np.uint8)
        text = ""
        if "language_" in self.level:
            text = INSTRUCTIONS[self._seed % len(INSTRUCTIONS)]
        out = {"RGB_INTERLEAVED": frame, "INSTR": text,
               "RGBD": np.zeros((4, self.height, self.width), np.uint8)}
        return {name: out[name] for name in self.requested}

    def is_running(self):
        return self._running

    def num_steps(self):
        return self._frames

    def close(self):
        self._running = False
        return True
