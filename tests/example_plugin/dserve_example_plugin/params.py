from pydantic import Field

from dserve.params import DecodingParams


class LeftToRightParams(DecodingParams):
    tokens_per_step: int = Field(1, ge=1, le=64, description="leftmost masked positions committed per step")
