"""Request and response bodies, with limits and an example for every field (shown on /docs)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PNG_1x1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
BITS_EX = "0110" * 32
Output = Literal["png", "array", "bits"]


class PatternBatch(BaseModel):
    """Patterns in exactly one of three forms."""
    model_config = ConfigDict(extra="forbid")

    images: list[str] | None = Field(
        None, description="Base64 image files (PNG, JPEG, BMP, GIF, WebP; a data: URL prefix is fine). "
        "Converted to the model's size and channels, binarised for binary models.", examples=[[PNG_1x1]])
    arrays: list[list[Any]] | None = Field(
        None, description="Nested arrays of numbers in [0, 1], each of the model's input shape "
        "(C, H, W), (H, W) for one channel, or (D,)", examples=[[[[0, 1, 1], [1, 0, 0.5]]]])
    bits: list[str] | None = Field(
        None, description="Strings of 0/1 characters, one per pattern (binary models)", examples=[[BITS_EX]])

    @model_validator(mode="after")
    def _exactly_one(self) -> PatternBatch:
        given = [k for k in ("images", "arrays", "bits") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of images, arrays, bits; got {given or 'none'}")
        return self

    @property
    def source(self) -> str:
        return next(k for k in ("images", "arrays", "bits") if getattr(self, k) is not None)


class WriteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(),
                              json_schema_extra={"examples": [{"model": "binary128",
                                                               "patterns": {"bits": [BITS_EX]}}]})
    model: str | None = Field(None, description="Model name from GET /v1/models; default: the "
                              "characters model (else the first loaded)", examples=["characters32"])
    patterns: PatternBatch = Field(description="The patterns to store in the new session",
                                   examples=[{"bits": [BITS_EX]}])


class RetrieveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=1, description="Read steps (default: the model's; at most the "
                              "server's EBMM_MAX_READ_STEPS)", examples=[10])
    trajectory: bool = Field(False, description="Also return every iterate of the read", examples=[False])
    output: Output | None = Field(None, description="png (base64, image models), array (nested "
                                  "floats) or bits (binary models, thresholded at 0.5); default "
                                  "png for images, bits for bit strings", examples=["png"])
    top_k: int | None = Field(None, ge=1, le=16, description="Also return, per query, the k best distinct "
                              "candidates with their familiarity (several descents from different starts: "
                              "the query, the slots nearest it for slot memories, perturbed queries "
                              "otherwise; see model/sampling.py)", examples=[3])
    samples: int | None = Field(None, ge=1, le=64, description="Also return this many stochastic reads per "
                                "query (annealed Langevin descents started from candidates drawn in "
                                "proportion to softmax(familiarity / temperature))", examples=[8])
    temperature: float = Field(0.01, gt=0, le=1, description="Temperature of `samples`: higher spreads the "
                               "samples over more candidates and adds more noise", examples=[0.01])
    match_threshold: float | None = Field(None, ge=0, le=1, description="Familiarity at or above which a "
                                          "result is called a match (default: the model card's calibrated "
                                          "threshold)", examples=[0.95])


class RetrieveRequest(RetrieveOptions):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"queries": {"bits": [BITS_EX]}, "steps": 10, "output": "bits"}]})
    queries: PatternBatch = Field(description="Distorted or partial patterns to restore",
                                  examples=[{"bits": [BITS_EX]}])
    mask: PatternBatch | None = Field(None, description="Known pixels (>= 0.5 / white = known, kept "
                                      "fixed while reading: inpainting); one for all queries or one "
                                      "per query", examples=[{"bits": ["1" * 64 + "0" * 64]}])


class CompiledRead(BaseModel):
    """One kind of read compiled at start-up (EBMM_COMPILE_READS, model/compiled.py) and what became of it."""
    batch: int = Field(description="Queries per read", examples=[1])
    masked: bool = Field(description="Whether the read keeps known pixels (a mask)", examples=[False])
    energies: str = Field(description="all (every iterate's) or last (the result's)", examples=["all"])
    steps: int = Field(description="Read steps (other steps read eagerly)", examples=[5])
    status: str = Field(description="used (checked and in use), refused (it differed from the eager read), failed "
                        "(compiling raised: no C compiler, say), eager (the family is not compiled)",
                        examples=["used"])
    seconds: float = Field(description="Seconds to compile and check", examples=[2.7])
    reason: str | None = Field(None, description="Why it is not used", examples=[None])
    reads: int = Field(0, description="Reads this server process has answered with it since start-up (the start-up "
                       "check's own read not counted; a read its graph's guards refuse runs eagerly and counts too)",
                       examples=[120])


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str = Field(examples=["characters32"])
    default: bool = Field(description="Used when a write names no model", examples=[True])
    kind: str = Field(description="binary, grayscale or colour", examples=["binary"])
    input_shape: list[int] = Field(examples=[[1, 32, 32]])
    architecture: str = Field(examples=["resnet_conv"])
    description: str = Field("", description="What the model is, in plain terms (the card's description)",
                             examples=["A meta-tuned modern Hopfield memory over PCA codes: 64 writable slots ..."])
    memory_floats: int = Field(description="Floats written per session", examples=[4624])
    capacity_patterns: int | None = Field(
        description="Patterns one session holds apart, each in memory of its own (slot memories); more "
        "share slots and are recalled blended. null: no hard limit, recall degrades with the load",
        examples=[64])
    parameters: int = Field(examples=[1234567])
    default_read_steps: int = Field(examples=[5])
    write_steps: int = Field(examples=[5])
    weights_sha256: str = Field(examples=["9f2c0e..."])
    evaluation: list[dict[str, Any]] | None = Field(
        description="Evaluation results from the card, one per protocol cell (as `ebmm evaluate "
                    "--update-card` records them)",
        examples=[[{"task": "characters", "patterns": 64, "distortion": "block:16", "metric": "hamming",
                    "error_mean": 2.86, "error_p5": 2.06, "error_p95": 3.7, "memory_floats": 16128}]])
    card: dict[str, Any] = Field(description="The full model card", examples=[{"name": "characters32"}])
    compiled_reads: list[CompiledRead] | None = Field(
        None, description="The kinds of 1-query read compiled at start-up in the server's process "
        "(EBMM_COMPILE_READS) and what became of each; null: this model's reads are not compiled",
        examples=[None])


class ModelList(BaseModel):
    models: list[ModelInfo]


class SessionInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    session_id: str = Field(description="Unguessable id (256 bits)", examples=["yv1q3Jm2Y2..."])
    model: str = Field(examples=["characters32"])
    checkpoint_sha256: str = Field(description="Weights the session was written with", examples=["9f2c..."])
    patterns: int = Field(description="Patterns stored", examples=[64])
    version: int = Field(0, description="Appends so far (each one bumps it)", examples=[0])
    input_shape: list[int] = Field(examples=[[1, 32, 32]])
    memory_bytes: int = Field(description="Bytes of written weights (float32)", examples=[18496])
    stored_bytes: int = Field(description="Bytes held by the store (safetensors)", examples=[18600])
    writing_loss: float = Field(description="Last writing loss", examples=[-11.9])
    created_at: str = Field(description="ISO 8601, UTC", examples=["2025-01-01T12:00:00Z"])
    expires_at: str = Field(description="ISO 8601, UTC", examples=["2025-01-01T13:00:00Z"])


class WriteResponse(SessionInfo):
    writing_losses: list[float] = Field(description="Writing loss before each write step (reduced over "
                                        "the patterns: compare it between writes of equal size only)",
                                        examples=[[0.0, -3.2, -7.4, -9.8, -11.0]])
    ttl_seconds: int = Field(examples=[3600])
    warnings: list[str] = Field(description="What may make recall worse; empty when nothing does",
                                examples=[["65 patterns exceed this model's capacity of 64: pattern i shares its "
                                           "memory slot with pattern i + 64 (and so on), and such patterns are "
                                           "recalled as a blend of each other"]])
    conversions: list[str] = Field(description="What was done to the input to fit the model",
                                   examples=[["decoded PNG 28x28 RGB", "converted RGB to L",
                                              "resized 28x28 to 32x32 (bilinear)", "binarised at 0.5"]])


class Candidate(BaseModel):
    pattern: str | list[Any] = Field(description="A candidate restoration, in the requested output",
                                     examples=[PNG_1x1])
    familiarity: float = Field(description="How well it agrees with the query (as `Retrieved.familiarity`)",
                               examples=[0.97])
    match: bool | None = Field(description="familiarity >= the threshold in use; null without one, and for "
                               "models whose queries get their own familiarity score (the span memories), "
                               "whose calibrated threshold is not on this scale, unless the request gives "
                               "match_threshold", examples=[True])
    energy: float = Field(description="Energy of the candidate under the session's memory", examples=[-7.1])


class Retrieved(BaseModel):
    index: int = Field(description="Position of the query", examples=[0])
    pattern: str | list[Any] = Field(description="The restored pattern, in the requested output",
                                     examples=[PNG_1x1])
    energy: float = Field(description="Energy of the restored pattern", examples=[-7.1])
    energies: list[float] = Field(description="Energy at the query, each read step, and the result",
                                  examples=[[-1.2, -5.0, -7.1]])
    trajectory: list[str | list[Any]] | None = Field(None, description="Every iterate (query first), "
                                                      "when asked", examples=[None])
    familiarity: float = Field(description="How well the recall agrees with the query, in [0, 1]: 1 minus the "
                               "mean disagreement outside the square where they disagree most (images; the "
                               "known pixels only, when a mask is given). Stored patterns score near 1, "
                               "patterns never stored lower", examples=[0.998])
    candidates: list[Candidate] | None = Field(None, description="With `top_k`: the k best distinct "
                                               "candidates, best first (fewer when fewer were found)",
                                               examples=[None])
    samples: list[Candidate] | None = Field(None, description="With `samples`: stochastic reads",
                                            examples=[None])
    match: bool | None = Field(description="familiarity >= the threshold (the model card's, calibrated so that "
                               "about 1% of never-stored clean queries match, or the request's "
                               "match_threshold); null when neither exists", examples=[True])


class RetrieveResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    session_id: str = Field(examples=["yv1q3Jm2Y2..."])
    model: str = Field(examples=["characters32"])
    steps: int = Field(description="Read steps run", examples=[5])
    output: Output = Field(examples=["png"])
    match_threshold: float | None = Field(description="The familiarity threshold used for `match`",
                                          examples=[0.9521])
    masked: bool = Field(description="Whether a mask kept known pixels fixed", examples=[True])
    conversions: list[str] = Field(examples=[["decoded PNG 32x32 L", "binarised at 0.5"]])
    warnings: list[str] = Field([], description="What about the queries may make recall worse (a resize, "
                                "likely inverted ink); empty when nothing does",
                                examples=[["queries: 1 of 1 images are mostly white (items 0): model "
                                           "characters32 stores white strokes on black, so these look "
                                           "inverted; send 255 - value (light ink on a dark background) "
                                           "unless that is what you mean"]])
    results: list[Retrieved]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ModelProcessState(BaseModel):
    """Batched reads' model processes (EBMM_MODEL_PROCESS): while fewer are up than started, batches run in
    the server's own process; readiness does not wait for them."""
    up: int = Field(description="Processes up now (idle or reading a batch)", examples=[2])
    size: int = Field(description="Processes the server runs (EBMM_BATCH_CONCURRENCY)", examples=[2])
    failures: int = Field(description="Processes that died, went silent (60 s) or failed to start; each is "
                          "started again, after a wait that grows while they keep failing, except after one "
                          "loaded other checkpoints than the server", examples=[0])


class Readiness(BaseModel):
    ready: bool = Field(examples=[True])
    models: list[str] = Field(examples=[["characters32"]])
    store: str = Field(description="Store URL without credentials", examples=["redis://127.0.0.1:6379/0"])
    store_ok: bool = Field(examples=[True])
    detail: str | None = Field(None, examples=[None])
    model_processes: ModelProcessState | None = Field(
        None, description="None when batched reads run in the server's process only",
        examples=[{"up": 2, "size": 2, "failures": 0}])
