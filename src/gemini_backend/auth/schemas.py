from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from gemini_backend.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gemini_backend.core.db import STORABLE_TEXT
from gemini_backend.users.schemas import USER_EXAMPLE, UserOut

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
    Field(validation_alias=AliasChoices("otp", "code", "otp_code"), examples=["123456"]),
]
# Where a password may stand instead: a fresh sign-in code, or None when not given.
OptionalOtpCode = Annotated[
    str | None,
    StringConstraints(strip_whitespace=True, pattern=r"^\d{6}$"),
    Field(validation_alias=AliasChoices("otp", "code", "otp_code")),
]
NewPassword = Annotated[
    str,
    Field(
        min_length=MIN_PASSWORD_LENGTH,
        max_length=MAX_PASSWORD_LENGTH,
        description="8 to 128 characters; commonly used passwords are refused.",
    ),
]


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=STORABLE_TEXT),
]

# Realistic values shared by the examples of the OpenAPI schema.
EXAMPLE_NUMBER = "+919876543210"
EXAMPLE_PASSWORD = "violet-harbour-42"  # noqa: S105 - an example
EXAMPLE_REFRESH_TOKEN = "zipjlZYKfbaVAOKboDrzEF4Ups0cqjXV7LnJNvZLOC4"  # noqa: S105 - an example
EXAMPLE_ACCESS_TOKEN = ".".join(
    (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
        "eyJzdWIiOiIxIiwic2lkIjo3LCJ0eXAiOiJhY2Nlc3MiLCJpYXQiOjE3OTUzNDE2MDAsImV4cCI6MTc5NTM0MjUw"
        "MCwianRpIjoiMjQ1ZmJlMGJmYjNkZGRhOSJ9",
        "JvGWUM0KPDENBIhYTL5YasAADCvcwpdISCLThJi9Aw4",
    )
)


class _In(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, populate_by_name=True)


class SignupIn(_In):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "mobile_number": EXAMPLE_NUMBER,
                "name": "Asha",
                "email": "asha@example.com",
                "password": EXAMPLE_PASSWORD,
            }
        }
    )

    mobile_number: MobileNumber
    name: Annotated[
        Name | None, Field(validation_alias=AliasChoices("name", "full_name", "fullName"))
    ] = None
    email: EmailStr | None = None
    password: Annotated[
        NewPassword | None,
        Field(
            description=(
                "Pending until the number is proven: it takes effect when the first "
                "`POST /auth/verify-otp` presents it too, and is dropped by any other."
            )
        ),
    ] = None


class MobileNumberIn(_In):
    model_config = ConfigDict(json_schema_extra={"example": {"mobile_number": EXAMPLE_NUMBER}})

    mobile_number: MobileNumber


class VerifyOtpIn(_In):
    model_config = ConfigDict(
        json_schema_extra={"example": {"mobile_number": EXAMPLE_NUMBER, "otp": "123456"}}
    )

    mobile_number: MobileNumber
    otp: OtpCodeField
    password: Annotated[
        str | None,
        Field(
            max_length=1024,
            description=(
                "The password given at signup, to activate it with this first verification "
                "(without it, a signup password is dropped)."
            ),
        ),
    ] = None


class LoginIn(_In):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"mobile_number": EXAMPLE_NUMBER, "password": EXAMPLE_PASSWORD}
        }
    )

    mobile_number: MobileNumber
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class RefreshIn(_In):
    model_config = ConfigDict(
        json_schema_extra={"example": {"refresh_token": EXAMPLE_REFRESH_TOKEN}}
    )

    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class LogoutIn(_In):
    model_config = ConfigDict(
        json_schema_extra={"example": {"refresh_token": EXAMPLE_REFRESH_TOKEN}}
    )

    refresh_token: Annotated[str, Field(min_length=1, max_length=512)] | None = None


class ResetPasswordIn(_In):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "mobile_number": EXAMPLE_NUMBER,
                "otp": "123456",
                "new_password": "amber-lantern-77",
            }
        }
    )

    mobile_number: MobileNumber
    otp: OtpCodeField
    new_password: Annotated[
        NewPassword, Field(validation_alias=AliasChoices("new_password", "newPassword"))
    ]


class ChangePasswordIn(_In):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "current_password": EXAMPLE_PASSWORD,
                "new_password": "amber-lantern-77",
            }
        }
    )

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
    otp: Annotated[
        OptionalOtpCode,
        Field(
            description=(
                "A fresh sign-in code (`POST /auth/send-otp`): required instead of "
                "`current_password` when the account has no password yet."
            ),
        ),
    ] = None
    new_password: Annotated[
        NewPassword, Field(validation_alias=AliasChoices("new_password", "newPassword"))
    ]


class OtpSentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"message": "OTP sent.", "otp": "482915", "expires_in": 300}}
    )

    message: str
    otp: str | None = Field(
        default=None,
        description="Present only while OTP delivery is `response` (no SMS provider).",
    )
    expires_in: int = Field(description="Seconds the code stays valid.")


class TokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "access_token": EXAMPLE_ACCESS_TOKEN,
                "token_type": "bearer",
                "token": EXAMPLE_ACCESS_TOKEN,
                "expires_in": 900,
                "refresh_token": EXAMPLE_REFRESH_TOKEN,
                "is_new_user": False,
                "user": USER_EXAMPLE,
            }
        }
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type
    token: str = Field(description="Same as access_token, for clients that read `token`.")
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str
    is_new_user: bool = Field(
        default=False, description="True when this request created the account."
    )
    user: UserOut
