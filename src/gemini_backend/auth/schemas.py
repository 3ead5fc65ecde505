from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from gemini_backend.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gemini_backend.users.schemas import UserOut

MobileNumber = Annotated[
    str,
    Field(
        validation_alias=AliasChoices("mobile_number", "mobile", "phone", "mobileNumber"),
        min_length=1,
        max_length=32,
        description="Mobile number; without a country code it takes DEFAULT_PHONE_REGION.",
        examples=["+919876543210"],
    ),
]
OtpCodeField = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^\d{6}$"),
    Field(validation_alias=AliasChoices("otp", "code"), examples=["123456"]),
]
NewPassword = Annotated[
    str,
    Field(
        min_length=MIN_PASSWORD_LENGTH,
        max_length=MAX_PASSWORD_LENGTH,
        description="8 to 128 characters; commonly used passwords are refused.",
    ),
]


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class _In(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, populate_by_name=True)


class SignupIn(_In):
    mobile_number: MobileNumber
    name: Name | None = None
    email: EmailStr | None = None
    password: NewPassword | None = None


class MobileNumberIn(_In):
    mobile_number: MobileNumber


class VerifyOtpIn(_In):
    mobile_number: MobileNumber
    otp: OtpCodeField


class LoginIn(_In):
    mobile_number: MobileNumber
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class RefreshIn(_In):
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class LogoutIn(_In):
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)] | None = None


class ResetPasswordIn(_In):
    mobile_number: MobileNumber
    otp: OtpCodeField
    new_password: Annotated[
        NewPassword, Field(validation_alias=AliasChoices("new_password", "newPassword"))
    ]


class ChangePasswordIn(_In):
    current_password: Annotated[
        str | None,
        Field(
            default=None,
            max_length=1024,
            validation_alias=AliasChoices(
                "current_password", "old_password", "oldPassword", "currentPassword"
            ),
        ),
    ] = None
    new_password: Annotated[
        NewPassword, Field(validation_alias=AliasChoices("new_password", "newPassword"))
    ]


class OtpSentOut(BaseModel):
    message: str
    otp: str | None = Field(
        default=None,
        description="Present only while OTP delivery is `response` (no SMS provider).",
    )
    expires_in: int = Field(description="Seconds the code stays valid.")


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type
    token: str = Field(description="Same as access_token, for clients that read `token`.")
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str
    is_new_user: bool = False
    user: UserOut
