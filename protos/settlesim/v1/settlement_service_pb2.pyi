from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InsuranceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSURANCE_TYPE_UNSPECIFIED: _ClassVar[InsuranceType]
    INSURANCE_TYPE_EMPLOYEE: _ClassVar[InsuranceType]
    INSURANCE_TYPE_RESIDENT: _ClassVar[InsuranceType]

class MedicalType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEDICAL_TYPE_UNSPECIFIED: _ClassVar[MedicalType]
    MEDICAL_TYPE_CHRONIC_SPECIAL_OUTPATIENT: _ClassVar[MedicalType]

class CatalogClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATALOG_CLASS_UNSPECIFIED: _ClassVar[CatalogClass]
    CATALOG_CLASS_A: _ClassVar[CatalogClass]
    CATALOG_CLASS_B: _ClassVar[CatalogClass]
    CATALOG_CLASS_C: _ClassVar[CatalogClass]
    CATALOG_CLASS_NOT_LISTED: _ClassVar[CatalogClass]

class Coverage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COVERAGE_UNSPECIFIED: _ClassVar[Coverage]
    COVERAGE_CHRONIC_SPECIAL: _ClassVar[Coverage]
    COVERAGE_GENERAL_OUTPATIENT: _ClassVar[Coverage]
    COVERAGE_NONE: _ClassVar[Coverage]

class RegistrationScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRATION_SCOPE_UNSPECIFIED: _ClassVar[RegistrationScope]
    REGISTRATION_SCOPE_CITY: _ClassVar[RegistrationScope]
    REGISTRATION_SCOPE_INSTITUTION: _ClassVar[RegistrationScope]

class SettlementStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETTLEMENT_STATUS_UNSPECIFIED: _ClassVar[SettlementStatus]
    SETTLEMENT_STATUS_SETTLED: _ClassVar[SettlementStatus]
    SETTLEMENT_STATUS_REVERSED: _ClassVar[SettlementStatus]
    SETTLEMENT_STATUS_VOIDED: _ClassVar[SettlementStatus]
INSURANCE_TYPE_UNSPECIFIED: InsuranceType
INSURANCE_TYPE_EMPLOYEE: InsuranceType
INSURANCE_TYPE_RESIDENT: InsuranceType
MEDICAL_TYPE_UNSPECIFIED: MedicalType
MEDICAL_TYPE_CHRONIC_SPECIAL_OUTPATIENT: MedicalType
CATALOG_CLASS_UNSPECIFIED: CatalogClass
CATALOG_CLASS_A: CatalogClass
CATALOG_CLASS_B: CatalogClass
CATALOG_CLASS_C: CatalogClass
CATALOG_CLASS_NOT_LISTED: CatalogClass
COVERAGE_UNSPECIFIED: Coverage
COVERAGE_CHRONIC_SPECIAL: Coverage
COVERAGE_GENERAL_OUTPATIENT: Coverage
COVERAGE_NONE: Coverage
REGISTRATION_SCOPE_UNSPECIFIED: RegistrationScope
REGISTRATION_SCOPE_CITY: RegistrationScope
REGISTRATION_SCOPE_INSTITUTION: RegistrationScope
SETTLEMENT_STATUS_UNSPECIFIED: SettlementStatus
SETTLEMENT_STATUS_SETTLED: SettlementStatus
SETTLEMENT_STATUS_REVERSED: SettlementStatus
SETTLEMENT_STATUS_VOIDED: SettlementStatus

class PersonRef(_message.Message):
    __slots__ = ("person_no", "certificate_type", "certificate_no")
    PERSON_NO_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_NO_FIELD_NUMBER: _ClassVar[int]
    person_no: str
    certificate_type: str
    certificate_no: str
    def __init__(self, person_no: _Optional[str] = ..., certificate_type: _Optional[str] = ..., certificate_no: _Optional[str] = ...) -> None: ...

class Visit(_message.Message):
    __slots__ = ("institution_code", "person", "disease_code", "visit_date", "insurance_type", "medical_type")
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    DISEASE_CODE_FIELD_NUMBER: _ClassVar[int]
    VISIT_DATE_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MEDICAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    institution_code: str
    person: PersonRef
    disease_code: str
    visit_date: str
    insurance_type: InsuranceType
    medical_type: MedicalType
    def __init__(self, institution_code: _Optional[str] = ..., person: _Optional[_Union[PersonRef, _Mapping]] = ..., disease_code: _Optional[str] = ..., visit_date: _Optional[str] = ..., insurance_type: _Optional[_Union[InsuranceType, str]] = ..., medical_type: _Optional[_Union[MedicalType, str]] = ...) -> None: ...

class FeeItem(_message.Message):
    __slots__ = ("sequence_no", "catalog_code", "hospital_item_code", "unit_price_fen", "quantity", "amount_fen", "item_name")
    SEQUENCE_NO_FIELD_NUMBER: _ClassVar[int]
    CATALOG_CODE_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FEN_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    ITEM_NAME_FIELD_NUMBER: _ClassVar[int]
    sequence_no: str
    catalog_code: str
    hospital_item_code: str
    unit_price_fen: int
    quantity: int
    amount_fen: int
    item_name: str
    def __init__(self, sequence_no: _Optional[str] = ..., catalog_code: _Optional[str] = ..., hospital_item_code: _Optional[str] = ..., unit_price_fen: _Optional[int] = ..., quantity: _Optional[int] = ..., amount_fen: _Optional[int] = ..., item_name: _Optional[str] = ...) -> None: ...

class Registration(_message.Message):
    __slots__ = ("registration_id", "category", "destination_region", "scope", "institution_codes", "valid_from", "valid_until")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_REGION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_CODES_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    category: str
    destination_region: str
    scope: RegistrationScope
    institution_codes: _containers.RepeatedScalarFieldContainer[str]
    valid_from: str
    valid_until: str
    def __init__(self, registration_id: _Optional[str] = ..., category: _Optional[str] = ..., destination_region: _Optional[str] = ..., scope: _Optional[_Union[RegistrationScope, str]] = ..., institution_codes: _Optional[_Iterable[str]] = ..., valid_from: _Optional[str] = ..., valid_until: _Optional[str] = ...) -> None: ...

class VerifyRegistrationRequest(_message.Message):
    __slots__ = ("visit",)
    VISIT_FIELD_NUMBER: _ClassVar[int]
    visit: Visit
    def __init__(self, visit: _Optional[_Union[Visit, _Mapping]] = ...) -> None: ...

class VerifyRegistrationResponse(_message.Message):
    __slots__ = ("eligible", "reason", "message", "registration", "coverage", "person_no", "insured_region", "treatment_region", "sandbox")
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    PERSON_NO_FIELD_NUMBER: _ClassVar[int]
    INSURED_REGION_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_REGION_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    eligible: bool
    reason: str
    message: str
    registration: Registration
    coverage: Coverage
    person_no: str
    insured_region: str
    treatment_region: str
    sandbox: str
    def __init__(self, eligible: _Optional[bool] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., registration: _Optional[_Union[Registration, _Mapping]] = ..., coverage: _Optional[_Union[Coverage, str]] = ..., person_no: _Optional[str] = ..., insured_region: _Optional[str] = ..., treatment_region: _Optional[str] = ..., sandbox: _Optional[str] = ...) -> None: ...

class SettlementRequest(_message.Message):
    __slots__ = ("msgid", "visit", "items", "operator", "use_personal_account")
    MSGID_FIELD_NUMBER: _ClassVar[int]
    VISIT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    USE_PERSONAL_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    msgid: str
    visit: Visit
    items: _containers.RepeatedCompositeFieldContainer[FeeItem]
    operator: str
    use_personal_account: bool
    def __init__(self, msgid: _Optional[str] = ..., visit: _Optional[_Union[Visit, _Mapping]] = ..., items: _Optional[_Iterable[_Union[FeeItem, _Mapping]]] = ..., operator: _Optional[str] = ..., use_personal_account: _Optional[bool] = ...) -> None: ...

class PreSettleVisitRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: SettlementRequest
    def __init__(self, request: _Optional[_Union[SettlementRequest, _Mapping]] = ...) -> None: ...

class PreSettleVisitResponse(_message.Message):
    __slots__ = ("settlement",)
    SETTLEMENT_FIELD_NUMBER: _ClassVar[int]
    settlement: Settlement
    def __init__(self, settlement: _Optional[_Union[Settlement, _Mapping]] = ...) -> None: ...

class SettleVisitRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: SettlementRequest
    def __init__(self, request: _Optional[_Union[SettlementRequest, _Mapping]] = ...) -> None: ...

class SettleVisitResponse(_message.Message):
    __slots__ = ("settlement", "replayed")
    SETTLEMENT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    settlement: Settlement
    replayed: bool
    def __init__(self, settlement: _Optional[_Union[Settlement, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class SettlementTotals(_message.Message):
    __slots__ = ("total_fen", "full_self_pay_fen", "over_ceiling_self_pay_fen", "pre_self_pay_fen", "in_scope_fen", "deductible_applied_fen", "fund_pays_fen", "ratio_bp", "patient_pays_fen", "cap_remaining_fen", "deductible_remaining_fen", "serious_illness_fen", "large_amount_fen", "medical_assistance_fen", "pooled_fund_fen", "account_pays_fen", "cash_pays_fen", "account_balance_fen", "serious_threshold_applied_fen")
    TOTAL_FEN_FIELD_NUMBER: _ClassVar[int]
    FULL_SELF_PAY_FEN_FIELD_NUMBER: _ClassVar[int]
    OVER_CEILING_SELF_PAY_FEN_FIELD_NUMBER: _ClassVar[int]
    PRE_SELF_PAY_FEN_FIELD_NUMBER: _ClassVar[int]
    IN_SCOPE_FEN_FIELD_NUMBER: _ClassVar[int]
    DEDUCTIBLE_APPLIED_FEN_FIELD_NUMBER: _ClassVar[int]
    FUND_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    RATIO_BP_FIELD_NUMBER: _ClassVar[int]
    PATIENT_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    CAP_REMAINING_FEN_FIELD_NUMBER: _ClassVar[int]
    DEDUCTIBLE_REMAINING_FEN_FIELD_NUMBER: _ClassVar[int]
    SERIOUS_ILLNESS_FEN_FIELD_NUMBER: _ClassVar[int]
    LARGE_AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    MEDICAL_ASSISTANCE_FEN_FIELD_NUMBER: _ClassVar[int]
    POOLED_FUND_FEN_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    CASH_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_BALANCE_FEN_FIELD_NUMBER: _ClassVar[int]
    SERIOUS_THRESHOLD_APPLIED_FEN_FIELD_NUMBER: _ClassVar[int]
    total_fen: int
    full_self_pay_fen: int
    over_ceiling_self_pay_fen: int
    pre_self_pay_fen: int
    in_scope_fen: int
    deductible_applied_fen: int
    fund_pays_fen: int
    ratio_bp: int
    patient_pays_fen: int
    cap_remaining_fen: int
    deductible_remaining_fen: int
    serious_illness_fen: int
    large_amount_fen: int
    medical_assistance_fen: int
    pooled_fund_fen: int
    account_pays_fen: int
    cash_pays_fen: int
    account_balance_fen: int
    serious_threshold_applied_fen: int
    def __init__(self, total_fen: _Optional[int] = ..., full_self_pay_fen: _Optional[int] = ..., over_ceiling_self_pay_fen: _Optional[int] = ..., pre_self_pay_fen: _Optional[int] = ..., in_scope_fen: _Optional[int] = ..., deductible_applied_fen: _Optional[int] = ..., fund_pays_fen: _Optional[int] = ..., ratio_bp: _Optional[int] = ..., patient_pays_fen: _Optional[int] = ..., cap_remaining_fen: _Optional[int] = ..., deductible_remaining_fen: _Optional[int] = ..., serious_illness_fen: _Optional[int] = ..., large_amount_fen: _Optional[int] = ..., medical_assistance_fen: _Optional[int] = ..., pooled_fund_fen: _Optional[int] = ..., account_pays_fen: _Optional[int] = ..., cash_pays_fen: _Optional[int] = ..., account_balance_fen: _Optional[int] = ..., serious_threshold_applied_fen: _Optional[int] = ...) -> None: ...

class FundPayment(_message.Message):
    __slots__ = ("fund_type", "name", "base_fen", "limit_fen", "paid_fen", "detail")
    FUND_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_FEN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FEN_FIELD_NUMBER: _ClassVar[int]
    PAID_FEN_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    fund_type: str
    name: str
    base_fen: int
    limit_fen: int
    paid_fen: int
    detail: str
    def __init__(self, fund_type: _Optional[str] = ..., name: _Optional[str] = ..., base_fen: _Optional[int] = ..., limit_fen: _Optional[int] = ..., paid_fen: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class SettledItem(_message.Message):
    __slots__ = ("sequence_no", "catalog_code", "catalog_class", "self_pay_share_bp", "price_ceiling_fen", "amount_fen", "full_self_pay_fen", "over_ceiling_self_pay_fen", "pre_self_pay_fen", "in_scope_fen")
    SEQUENCE_NO_FIELD_NUMBER: _ClassVar[int]
    CATALOG_CODE_FIELD_NUMBER: _ClassVar[int]
    CATALOG_CLASS_FIELD_NUMBER: _ClassVar[int]
    SELF_PAY_SHARE_BP_FIELD_NUMBER: _ClassVar[int]
    PRICE_CEILING_FEN_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    FULL_SELF_PAY_FEN_FIELD_NUMBER: _ClassVar[int]
    OVER_CEILING_SELF_PAY_FEN_FIELD_NUMBER: _ClassVar[int]
    PRE_SELF_PAY_FEN_FIELD_NUMBER: _ClassVar[int]
    IN_SCOPE_FEN_FIELD_NUMBER: _ClassVar[int]
    sequence_no: str
    catalog_code: str
    catalog_class: CatalogClass
    self_pay_share_bp: int
    price_ceiling_fen: int
    amount_fen: int
    full_self_pay_fen: int
    over_ceiling_self_pay_fen: int
    pre_self_pay_fen: int
    in_scope_fen: int
    def __init__(self, sequence_no: _Optional[str] = ..., catalog_code: _Optional[str] = ..., catalog_class: _Optional[_Union[CatalogClass, str]] = ..., self_pay_share_bp: _Optional[int] = ..., price_ceiling_fen: _Optional[int] = ..., amount_fen: _Optional[int] = ..., full_self_pay_fen: _Optional[int] = ..., over_ceiling_self_pay_fen: _Optional[int] = ..., pre_self_pay_fen: _Optional[int] = ..., in_scope_fen: _Optional[int] = ...) -> None: ...

class TraceEntry(_message.Message):
    __slots__ = ("figure", "rule", "source", "detail")
    FIGURE_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    figure: str
    rule: str
    source: str
    detail: str
    def __init__(self, figure: _Optional[str] = ..., rule: _Optional[str] = ..., source: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Settlement(_message.Message):
    __slots__ = ("settlement_id", "visit_id", "msgid", "status", "institution_code", "person_no", "insured_region", "treatment_region", "disease_code", "visit_date", "insurance_type", "totals", "items", "trace", "undone_by_msgid", "sandbox", "funds")
    SETTLEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VISIT_ID_FIELD_NUMBER: _ClassVar[int]
    MSGID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    PERSON_NO_FIELD_NUMBER: _ClassVar[int]
    INSURED_REGION_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_REGION_FIELD_NUMBER: _ClassVar[int]
    DISEASE_CODE_FIELD_NUMBER: _ClassVar[int]
    VISIT_DATE_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    UNDONE_BY_MSGID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    FUNDS_FIELD_NUMBER: _ClassVar[int]
    settlement_id: str
    visit_id: str
    msgid: str
    status: SettlementStatus
    institution_code: str
    person_no: str
    insured_region: str
    treatment_region: str
    disease_code: str
    visit_date: str
    insurance_type: InsuranceType
    totals: SettlementTotals
    items: _containers.RepeatedCompositeFieldContainer[SettledItem]
    trace: _containers.RepeatedCompositeFieldContainer[TraceEntry]
    undone_by_msgid: str
    sandbox: str
    funds: _containers.RepeatedCompositeFieldContainer[FundPayment]
    def __init__(self, settlement_id: _Optional[str] = ..., visit_id: _Optional[str] = ..., msgid: _Optional[str] = ..., status: _Optional[_Union[SettlementStatus, str]] = ..., institution_code: _Optional[str] = ..., person_no: _Optional[str] = ..., insured_region: _Optional[str] = ..., treatment_region: _Optional[str] = ..., disease_code: _Optional[str] = ..., visit_date: _Optional[str] = ..., insurance_type: _Optional[_Union[InsuranceType, str]] = ..., totals: _Optional[_Union[SettlementTotals, _Mapping]] = ..., items: _Optional[_Iterable[_Union[SettledItem, _Mapping]]] = ..., trace: _Optional[_Iterable[_Union[TraceEntry, _Mapping]]] = ..., undone_by_msgid: _Optional[str] = ..., sandbox: _Optional[str] = ..., funds: _Optional[_Iterable[_Union[FundPayment, _Mapping]]] = ...) -> None: ...

class ReverseSettlementRequest(_message.Message):
    __slots__ = ("msgid", "institution_code", "settlement_id", "operator")
    MSGID_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    msgid: str
    institution_code: str
    settlement_id: str
    operator: str
    def __init__(self, msgid: _Optional[str] = ..., institution_code: _Optional[str] = ..., settlement_id: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class ReverseSettlementResponse(_message.Message):
    __slots__ = ("settlement", "replayed")
    SETTLEMENT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    settlement: Settlement
    replayed: bool
    def __init__(self, settlement: _Optional[_Union[Settlement, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class VoidByMessageIdRequest(_message.Message):
    __slots__ = ("msgid", "institution_code", "original_msgid", "original_infno", "operator")
    MSGID_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_MSGID_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_INFNO_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    msgid: str
    institution_code: str
    original_msgid: str
    original_infno: str
    operator: str
    def __init__(self, msgid: _Optional[str] = ..., institution_code: _Optional[str] = ..., original_msgid: _Optional[str] = ..., original_infno: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class VoidByMessageIdResponse(_message.Message):
    __slots__ = ("voided_settlement", "settlement", "replayed", "sandbox")
    VOIDED_SETTLEMENT_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    voided_settlement: bool
    settlement: Settlement
    replayed: bool
    sandbox: str
    def __init__(self, voided_settlement: _Optional[bool] = ..., settlement: _Optional[_Union[Settlement, _Mapping]] = ..., replayed: _Optional[bool] = ..., sandbox: _Optional[str] = ...) -> None: ...

class GetSettlementRequest(_message.Message):
    __slots__ = ("institution_code", "settlement_id", "msgid")
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MSGID_FIELD_NUMBER: _ClassVar[int]
    institution_code: str
    settlement_id: str
    msgid: str
    def __init__(self, institution_code: _Optional[str] = ..., settlement_id: _Optional[str] = ..., msgid: _Optional[str] = ...) -> None: ...

class GetSettlementResponse(_message.Message):
    __slots__ = ("settlement",)
    SETTLEMENT_FIELD_NUMBER: _ClassVar[int]
    settlement: Settlement
    def __init__(self, settlement: _Optional[_Union[Settlement, _Mapping]] = ...) -> None: ...

class ReconcileFigures(_message.Message):
    __slots__ = ("count", "total_fen", "fund_pays_fen", "patient_pays_fen")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FEN_FIELD_NUMBER: _ClassVar[int]
    FUND_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    PATIENT_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    count: int
    total_fen: int
    fund_pays_fen: int
    patient_pays_fen: int
    def __init__(self, count: _Optional[int] = ..., total_fen: _Optional[int] = ..., fund_pays_fen: _Optional[int] = ..., patient_pays_fen: _Optional[int] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("institution_code", "start_date", "end_date", "hospital", "include_entries")
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    institution_code: str
    start_date: str
    end_date: str
    hospital: ReconcileFigures
    include_entries: bool
    def __init__(self, institution_code: _Optional[str] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., hospital: _Optional[_Union[ReconcileFigures, _Mapping]] = ..., include_entries: _Optional[bool] = ...) -> None: ...

class ReconcileEntry(_message.Message):
    __slots__ = ("settlement_id", "msgid", "visit_date", "total_fen", "fund_pays_fen", "patient_pays_fen")
    SETTLEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MSGID_FIELD_NUMBER: _ClassVar[int]
    VISIT_DATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FEN_FIELD_NUMBER: _ClassVar[int]
    FUND_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    PATIENT_PAYS_FEN_FIELD_NUMBER: _ClassVar[int]
    settlement_id: str
    msgid: str
    visit_date: str
    total_fen: int
    fund_pays_fen: int
    patient_pays_fen: int
    def __init__(self, settlement_id: _Optional[str] = ..., msgid: _Optional[str] = ..., visit_date: _Optional[str] = ..., total_fen: _Optional[int] = ..., fund_pays_fen: _Optional[int] = ..., patient_pays_fen: _Optional[int] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("matched", "platform", "mismatched_fields", "entries", "sandbox")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    MISMATCHED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    matched: bool
    platform: ReconcileFigures
    mismatched_fields: _containers.RepeatedScalarFieldContainer[str]
    entries: _containers.RepeatedCompositeFieldContainer[ReconcileEntry]
    sandbox: str
    def __init__(self, matched: _Optional[bool] = ..., platform: _Optional[_Union[ReconcileFigures, _Mapping]] = ..., mismatched_fields: _Optional[_Iterable[str]] = ..., entries: _Optional[_Iterable[_Union[ReconcileEntry, _Mapping]]] = ..., sandbox: _Optional[str] = ...) -> None: ...
