"""OrtCodec: an exported folder run with ONNX Runtime or OpenVINO + numpy + constriction.

No torch. Where the graphs run is one `backends.Backend` (runtime ort|openvino, precision
fp32|bf16, provider, threads); nothing else here knows which library is behind a session.

Implements the compressor.codec.Codec protocol (name, encode, decode), so `validate` measures
it against the torch baseline on the same images. The arithmetic between the graphs follows
CompressAI's compress()/decompress() exactly: symbols are round(y - mu) (round half to
even, like torch.round) and the scale index counts the scale-table entries below the scale.

Which h_s picks the tables: an export with integer tables (hyper_int.npz, the default for
hyperprior kinds) computes indexes and means in exact integers (compressor.runtime.integer)
and writes container format 3, which decodes identically on any machine, thread count, ORT
version or optimisation level. An export without them runs the float h_s.onnx on both
sides and writes format 2 (ONNX Runtime FP32) or 4 (another runtime or precision, named in
the header): it decodes only where h_s reproduces the encoder's last bits of every scale (the
same kernels; in practice the same runtime, machine and session options), and a decoder whose
runtime or precision differs from the file's refuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from compressor.errors import (
    BitstreamError,
    CheckpointError,
    CompressorError,
    DataError,
    RecipeError,
)
from compressor.runtime import container, image, tiles
from compressor.runtime import integer as ri
from compressor.runtime import manifest as mf
from compressor.runtime.backends import (  # re-exported: their home used to be this module
    AUTO,
    OPTIMIZATION,
    PROVIDERS,
    TAGS,
    Backend,
    OvSession,
    auto_session,
    providers_for,
    runtime_of,
    session_options,
)
from compressor.runtime.entropy import MAX_ABS_VALUE, Decoder, Encoder, Tables

log = logging.getLogger(__name__)
#: OPTIMIZATION, PROVIDERS, providers_for and session_options live in backends now
__all__ = [
    "OPTIMIZATION",
    "PROVIDERS",
    "OrtCodec",
    "load_codec",
    "providers_for",
    "session_options",
]


class OrtCodec:
    """The deployable codec of one export folder."""

    def __init__(
        self,
        folder: Path,
        provider: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        hyper: str | None = None,
        runtime: str | None = None,
        precision: str = "fp32",
    ) -> None:
        self.folder = mf.locate(Path(folder))
        self.manifest = mf.read(self.folder)
        mf.verify(self.folder, self.manifest)
        self.kind = self.manifest.kind
        self.model_id = bytes.fromhex(self.manifest.model_id[: 2 * container.MODEL_ID_BYTES])
        self.pad_multiple = self.manifest.pad_multiple
        runtime = runtime_of(provider, runtime)
        if runtime == AUTO and precision != "fp32":
            raise RecipeError(f"runtime auto runs fp32 hints only (got precision {precision!r})")
        base = "ort" if runtime == AUTO else runtime  # auto: the float h_s stays on ORT
        self.backend = Backend(
            base, precision, provider if base == "ort" else "cpu", threads, optimization
        )
        self.provider = provider if runtime != "openvino" else self.backend.tag
        self.threads = threads
        self.name = (
            f"onnx:{self.folder.name}" if runtime == "ort" else f"{runtime}:{self.folder.name}"
        )
        #: one session per graph, each with ONNX Runtime's interface (backends.OvSession too)
        self.sessions: dict[str, Any] = {}
        #: which runtime runs each graph (runtime "auto" chose them by timing them here)
        self.runtimes: dict[str, str] = {}
        for g in mf.GRAPHS[self.kind]:
            path = self.folder / f"{g}.onnx"
            if runtime == AUTO and g != "h_s":
                self.sessions[g], self.runtimes[g] = auto_session(path, self.backend)
            else:
                self.sessions[g], self.runtimes[g] = self.backend.session(path), base
        self._load_tables(self.folder / mf.TABLES)
        #: the integer hyper-decoder (decodes format 3 files), None in a float-only export
        self.integer: ri.IntegerHyper | None = None
        if ri.FILE in self.manifest.files and self.kind in mf.INTEGER_KINDS:
            self.integer = ri.IntegerHyper.load(str(self.folder / ri.FILE))
        #: the path encode() uses: "integer" (format 3) where the export has it, else "float"
        self.hyper = hyper or ("integer" if self.integer else "float")
        if self.hyper not in ("integer", "float") or (self.hyper == "integer" and not self.integer):
            raise RecipeError(
                f"hyper path {hyper!r} is not available in {self.folder}; it has: "
                f"{'integer, float' if self.integer else 'float'}"
            )
        #: the format encode() writes, and the float h_s tag it records (format 4 only)
        self.hyper_tag = TAGS[self.backend.tag]
        if self.hyper == "integer":
            self.version = container.FORMAT_VERSION
        elif self.kind in mf.INTEGER_KINDS and self.hyper_tag:
            self.version = container.TAGGED_VERSION
        else:
            self.version = container.FLOAT_VERSION
        #: latents per side of each g_a / g_s tile (None: whole images); only memory depends
        #: on it, the bytes and pixels do not (tests/unit/test_runtime_bounds.py)
        self.tile: int | None = tiles.TILE
        #: z latents per side of each integer h_s tile (None: whole); memory only, as above
        self.hyper_tile: int | None = tiles.HYPER_TILE
        self._margins: dict[int, int | None] = {}  # receptive fields: g_s by stride, g_a -stride
        log.debug(
            "loaded %s codec %s (%s, %s threads)", self.kind, self.folder, self.provider, threads
        )

    def _checked_input(self, rgb8: np.ndarray) -> tuple[np.ndarray, int, int, Any]:
        """(rgb8, h, w, padding) of an image this format can hold; DataError if not."""
        rgb8 = image.check_rgb8(rgb8)
        h, w = rgb8.shape[:2]
        try:
            container.check_size(h, w)
        except BitstreamError as e:
            raise DataError(str(e)) from None
        return rgb8, h, w, image.padding(h, w, self.pad_multiple)

    # -- public API (the Codec protocol) --------------------------------------------------
    def encode(self, rgb8: np.ndarray) -> bytes:
        rgb8, h, w, pad = self._checked_input(rgb8)
        y = self._analyze(rgb8, pad, self.tile)
        tag = self.hyper_tag if self.version == container.TAGGED_VERSION else 0
        header = container.Header(self.model_id, h, w, pad, self.version, tag)
        if self.kind == "factorized":
            return self.encode_symbols(header, {"y": _symbols(y, self.medians)})
        z_sym = _symbols(self._run("h_a", y, "z"), self.medians)
        hyper = None
        if self.kind == "mean-scale-hyperprior":  # y's symbols are centred on h_s's means
            hyper = self._hyper(z_sym, y.shape, integer=self.hyper == "integer")
        y_sym = _symbols(y, None if hyper is None else hyper[1])
        del y  # the float latent is not needed past here: its memory goes before coding
        indexes = None if hyper is None else hyper[0]
        return self.encode_symbols(header, {"z": z_sym, "y": y_sym}, indexes)

    def encode_symbols(
        self,
        header: container.Header,
        symbols: dict[str, np.ndarray],
        indexes: np.ndarray | None = None,
    ) -> bytes:
        """The file of given integer latents: what decode_latents returns, coded again.

        Needs no float graph under format 3 (the scale indexes come from z's symbols in
        integers), so golden bitstreams are reproduced byte for byte on any machine.
        `indexes`: y's scale indexes when the caller already ran h_s on these z symbols
        (encode of a mean-scale model needs its means first), so it runs once per image.
        """
        enc = Encoder()
        y_sym = symbols["y"]
        if self.kind == "factorized":
            enc.latent(y_sym, self._channel_index(y_sym.shape), self.bottleneck)
        else:
            z_sym = symbols["z"]
            enc.latent(z_sym, self._channel_index(z_sym.shape), self.bottleneck)
            integer = header.version == container.FORMAT_VERSION
            if not integer:
                self.check_hyper_tag(header, DataError)
            if indexes is None:
                indexes, _ = self._hyper(z_sym, y_sym.shape, integer)
            enc.latent(y_sym, indexes, self.gaussian)
        return container.pack(header, enc.finish(check=header.version >= 2))

    def decode(self, data: bytes, *, max_pixels: int = container.DEFAULT_MAX_PIXELS) -> np.ndarray:
        """The image of a file; BitstreamError if it is corrupt or declares over max_pixels."""
        header, _, y_hat = self.decode_latents(data, max_pixels=max_pixels)
        return self._synthesize(y_hat, header.pad, self.tile)

    def decode_latents(
        self, data: bytes, *, max_pixels: int = container.DEFAULT_MAX_PIXELS
    ) -> tuple[container.Header, dict[str, np.ndarray], np.ndarray]:
        """(header, integer symbols by latent name, y_hat): everything before g_s.

        With the integer hyper path (format 3) all of it is exact, so it is what golden
        bitstreams and the bit-exactness matrix compare across machines and sessions.
        """
        header, payload = self._checked_header(data, max_pixels)
        y_shape = self._latent_shape("y", header.padded)
        dec = Decoder(payload, check=header.version >= 2)
        symbols: dict[str, np.ndarray] = {}
        if self.kind == "factorized":
            y_int = dec.latent(self._channel_index(y_shape), self.bottleneck)
            symbols["y"] = y_int.reshape(y_shape)
            y_hat = self._dequantize(y_int, y_shape)
        else:
            z_shape = self._latent_shape("z", header.padded)
            integer = header.version == container.FORMAT_VERSION
            if not integer:  # before any symbol is decoded with indexes that may not match
                self.check_hyper_tag(header, BitstreamError)
            z_sym = dec.latent(self._channel_index(z_shape), self.bottleneck).reshape(z_shape)
            indexes, means = self._hyper(z_sym, y_shape, integer, BitstreamError)
            symbols["z"] = z_sym
            symbols["y"] = dec.latent(indexes, self.gaussian).reshape(y_shape)
            y_sym = symbols["y"].astype(np.float32)
            y_hat = y_sym if means is None else y_sym + means
        dec.finish()
        return header, symbols, y_hat.astype(np.float32)

    def _checked_header(self, data: bytes, max_pixels: int) -> tuple[container.Header, bytes]:
        """(header, payload) of a file this export may decode: CRC, format, model, size and
        padding checked before any payload byte is trusted."""
        header, payload = container.unpack(data)
        self.check_version(header.version)
        self.check_model(header.model_id)
        container.check_pixels(header.height, header.width, max_pixels)
        if header.pad != image.padding(header.height, header.width, self.pad_multiple):
            raise BitstreamError(
                f"bitstream is corrupt (padding {header.pad} does not fit image size "
                f"{header.height}x{header.width} and multiple {self.pad_multiple})"
            )
        return header, payload

    def check_version(self, version: int) -> None:
        """A format-3 file needs the integer hyper path; formats 1-2 run the float h_s, which
        every hyperprior export carries (integer exports too)."""
        if (
            version == container.FORMAT_VERSION
            and self.integer is None
            and self.kind != "factorized"
        ):
            raise BitstreamError(
                f"bitstream is format {version} (integer hyper-decoder) but this export "
                f"({self.folder}) is float-only and reads formats 1-{container.FLOAT_VERSION}: "
                "decode it with the export that encoded it (one with hyper_int.npz)"
            )

    def check_hyper_tag(
        self, header: container.Header, error: type[CompressorError] = BitstreamError
    ) -> None:
        """A float-path file decodes only where h_s runs as it did when it was encoded."""
        tag = header.hyper_tag if header.version == container.TAGGED_VERSION else 0
        if tag == self.hyper_tag:
            return
        names = {v: k for k, v in TAGS.items()}
        theirs = names.get(tag, f"unknown tag {tag}")
        raise error(
            f"bitstream's float hyper-decoder ran on {theirs}, this codec runs it on "
            f"{self.backend.tag}: its scale indexes may differ and the file would decode to "
            f"garbage; decode it with {_how(theirs)} (or re-encode with the integer hyper path)"
        )

    def check_model(self, model_id: bytes) -> None:
        if model_id != self.model_id:
            raise BitstreamError(
                f"bitstream was encoded by another model (id {model_id.hex()}); this codec "
                f"({self.manifest.arch}, {self.folder}) has id {self.model_id.hex()}: decode "
                "it with the export that encoded it"
            )

    # -- internals -------------------------------------------------------------------------
    def _analyze(
        self, rgb8: np.ndarray, pad: tuple[int, int, int, int], tile: int | None
    ) -> np.ndarray:
        def g_a(x: np.ndarray) -> np.ndarray:
            return self._run("g_a", x, "y")

        stride = self.manifest.latents["y"]["stride"]
        h, w = rgb8.shape[0] + pad[0] + pad[1], rgb8.shape[1] + pad[2] + pad[3]
        margin = None
        if tile is not None and max(h, w) > tile * stride and h % stride == w % stride == 0:
            if -stride not in self._margins:  # keyed apart from g_s's
                self._margins[-stride] = tiles.analysis_margin(g_a, stride)
            margin = self._margins[-stride]
        if tile is None or margin is None:
            return g_a(image.to_input(rgb8, pad))
        padded = np.pad(rgb8, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
        y = tiles.analyze(g_a, padded, stride, tile, margin)
        del padded
        self._release("g_a", (1, 3, stride, stride))
        return y

    def _release(self, graph: str, shape: tuple[int, ...]) -> None:
        """Hand ONNX Runtime's arena of `graph` back to the system once, after its tiles.

        The arena keeps the largest tile's activations (~1 GB for g_a of a q2 hyperprior)
        for the rest of the process; a tiny run with arena shrinkage frees them (~0.1 s).
        Shrinking on every tile would cost page faults on each; OpenVINO has no such arena.
        """
        session = self.sessions[graph]
        if isinstance(session, OvSession):
            return
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)}, options)

    def _synthesize(
        self, y_hat: np.ndarray, pad: tuple[int, int, int, int], tile: int | None
    ) -> np.ndarray:
        def g_s(y: np.ndarray) -> np.ndarray:
            return self._run("g_s", y, "x_hat", BitstreamError)

        stride = self.manifest.latents["y"]["stride"]
        if tile is None or max(y_hat.shape[-2:]) <= tile:
            return image.from_output(g_s(y_hat), pad)
        if tile < 1:
            raise ValueError(f"tile must be >= 1 latent, got {tile}")
        if stride not in self._margins:  # measured once, on the first large image
            self._margins[stride] = tiles.receptive_margin(g_s, y_hat.shape[1], stride)
            log.debug("g_s of %s reaches %s latents", self.folder, self._margins[stride])
        margin = self._margins[stride]
        if margin is None:  # no bounded receptive field measured: one whole-image run
            return image.from_output(g_s(y_hat), pad)
        rgb = tiles.synthesize(g_s, y_hat, stride, tile, margin)
        top, bottom, left, right = pad
        return np.ascontiguousarray(rgb[top : rgb.shape[0] - bottom, left : rgb.shape[1] - right])

    def _load_tables(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable entropy table file ({e})") from None
        y = self.manifest.latents["y"]
        eb_channels = (
            y["channels"] if self.kind == "factorized" else self.manifest.latents["z"]["channels"]
        )
        self.bottleneck = _tables(arrays, "eb", path)
        self.medians = _array(arrays, "eb_medians", path, np.float32).reshape(1, -1, 1, 1)
        if len(self.bottleneck) != eb_channels or self.medians.size != eb_channels:
            raise CheckpointError(f"{path}: bottleneck tables do not have {eb_channels} channels")
        if self.kind != "factorized":
            self.gaussian = _tables(arrays, "gc", path)
            self.scale_table = _array(arrays, "gc_scale_table", path, np.float32)
            if self.scale_table.shape != (len(self.gaussian),):
                raise CheckpointError(f"{path}: scale table and Gaussian CDFs differ in length")

    def _run(
        self, graph: str, x: np.ndarray, what: str, error: type[CompressorError] = CompressorError
    ) -> np.ndarray:
        session = self.sessions[graph]
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        if not np.isfinite(out).all():
            # when decoding, only a forged stream (CRC-valid, nonsense symbols) gets here
            raise error(f"graph {graph} produced non-finite values for {what}")
        return np.asarray(out, dtype=np.float32)

    def _hyper(
        self,
        z_sym: np.ndarray,
        y_shape: tuple[int, ...],
        integer: bool,
        error: type[CompressorError] = CompressorError,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(scale-table indexes, means or None) for y, from h_s of the z symbols."""
        if integer and self.integer is not None:  # exact integers: the same on every machine
            z_shape = (1, self.medians.size, *z_sym.shape[-2:])
            indexes, means = self._integer_hyper(z_sym.reshape(z_shape), y_shape)
            if indexes.size != int(np.prod(y_shape)):
                raise CheckpointError(f"integer h_s gives {indexes.size} scales for y {y_shape}")
            return indexes, means
        z_hat = z_sym.astype(np.float32) + self.medians
        params = self._run("h_s", z_hat, "scales", error)
        if self.kind == "mean-scale-hyperprior":
            scales, means = np.split(params, 2, axis=1)
        else:
            scales, means = params, None
        if scales.shape != tuple(y_shape):
            raise CheckpointError(f"h_s gives scales of shape {scales.shape}, expected {y_shape}")
        # CompressAI's build_indexes: len-1 minus the count of table[:-1] >= scale, i.e. the
        # count of table[:-1] < scale. Both in float32, so encoder and decoder agree exactly.
        indexes = np.searchsorted(self.scale_table[:-1], scales.ravel(), side="left")
        return indexes.astype(np.int64), means

    def _integer_hyper(
        self, z_sym: np.ndarray, y_shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The integer h_s, in tiles of z where it is large (its float64 arrays of a whole
        4096 x 4096 image were ~800 MB); exact, so the same indexes and means either way."""
        assert self.integer is not None
        s = y_shape[-1] // max(z_sym.shape[-1], 1)
        margin = tiles.integer_margin(self.integer.layers)
        tile = self.hyper_tile
        if tile is None or margin is None or max(z_sym.shape[-2:]) <= tile:
            return self.integer(z_sym)
        return tiles.hyper(self.integer, z_sym, tile, margin, s)

    def _dequantize(self, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return values.reshape(shape).astype(np.float32) + self.medians

    def _channel_index(self, shape: tuple[int, ...]) -> np.ndarray:
        c = shape[1]
        return np.broadcast_to(np.arange(c).reshape(1, c, 1, 1), shape).ravel()

    def _latent_shape(self, name: str, padded: tuple[int, int]) -> tuple[int, int, int, int]:
        entry = self.manifest.latents[name]
        s = entry["stride"]
        return (1, entry["channels"], padded[0] // s, padded[1] // s)


def load_codec(
    folder: Path,
    provider: str = "cpu",
    threads: int | None = None,
    *,
    runtime: str | None = None,
    precision: str = "fp32",
) -> OrtCodec:
    """The runtime codec of an export folder (or of a pipeline step folder holding one).

    runtime: "ort" or "openvino" (default: ort, or openvino when provider is "openvino");
    precision: "fp32", or "bf16" with OpenVINO on a CPU with native BF16 (never a default).
    """
    kw: dict[str, Any] = {"provider": provider, "threads": threads}
    kw |= {"runtime": runtime, "precision": precision}
    if mf.read(mf.locate(Path(folder))).kind == "rnn":  # a loop of recurrent step graphs
        from compressor.runtime.rnn import RnnOrtCodec

        return RnnOrtCodec(Path(folder), **kw)
    return OrtCodec(Path(folder), **kw)


def _how(tag: str) -> str:
    runtime, _, precision = tag.partition("-")
    if runtime not in ("ort", "openvino"):
        return "the runtime that encoded it"
    return f"--runtime {runtime} --precision {precision}"


def _symbols(values: np.ndarray, means: np.ndarray | None) -> np.ndarray:
    """round(values - means) as int32 (torch.round and np.rint both round half to even).

    Clipped to the coder's range here (|v| <= 2^29, so int32 holds it: half the memory of
    int64), so the z the encoder feeds h_s is the z the decoder decodes even for absurd
    latents.
    """
    centred = values if means is None else values - means
    return np.clip(np.rint(centred), -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.int32)


def _array(arrays: dict[str, np.ndarray], key: str, path: Path, dtype: Any) -> np.ndarray:
    if key not in arrays:
        raise CheckpointError(f"{path} has no array {key!r}; export the model again")
    value = arrays[key]
    if value.dtype != dtype:
        raise CheckpointError(f"{path}: {key} must be {np.dtype(dtype).name}, not {value.dtype}")
    return value


def _tables(arrays: dict[str, np.ndarray], prefix: str, path: Path) -> Tables:
    return Tables.from_arrays(
        _array(arrays, f"{prefix}_cdf", path, np.int32),
        _array(arrays, f"{prefix}_cdf_length", path, np.int32),
        _array(arrays, f"{prefix}_offset", path, np.int32),
        f"{path.name}:{prefix}",
    )
