from dserve.fields import DecodingField
from dserve.params import DecodingParams

# Also a server flag (--tokens-per-step, DSERVE_TOKENS_PER_STEP), through register_server_flags.
TOKENS_PER_STEP = DecodingField(
    "tokens_per_step", int, "example: leftmost masked positions committed per step", bounds={"ge": 1, "le": 64}, wire=False
)


class LeftToRightParams(DecodingParams):
    tokens_per_step: int = TOKENS_PER_STEP.field_info(1)
