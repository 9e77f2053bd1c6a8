"""GET /v1/models: every loaded model with its card."""
from __future__ import annotations

from fastapi import APIRouter
from model import compiled

from ..auth import Caller, State
from ..errors import error_responses
from ..registry import LoadedModel
from ..schemas import CompiledRead, ModelInfo, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


def model_info(m: LoadedModel, default: str) -> ModelInfo:
    c = m.card
    return ModelInfo(name=m.name, default=m.name == default, kind=m.kind, input_shape=list(m.input_shape),
                     architecture=str(c.get("architecture", "")),
                     description=str(c.get("description") or c.get("config", {}).get("note", "")),
                     memory_floats=int(c.get("memory_floats", 0)),
                     capacity_patterns=m.memory.capacity,
                     parameters=int(c.get("parameters", 0)), default_read_steps=m.default_read_steps,
                     write_steps=m.write_steps, weights_sha256=m.sha256, evaluation=c.get("evaluation"),
                     card=c, compiled_reads=_compiled(m))


def _compiled(m: LoadedModel) -> list[CompiledRead] | None:
    kinds = compiled.enabled(m.memory.ckpt.model)
    if kinds is None:
        return None
    fields = CompiledRead.model_fields
    return [CompiledRead(**{k: v for k, v in row.items() if k in fields}) for row in kinds.summary()]


@router.get("/models", response_model=ModelList, summary="Loaded models and their cards",
            responses=error_responses(401))
async def list_models(state: State, _: Caller) -> ModelList:
    return ModelList(models=[model_info(m, state.default_model) for m in state.models.values()])
