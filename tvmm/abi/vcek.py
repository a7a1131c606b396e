"""The certificate chain's format: AMD's VCEK extensions and the chain's signature scheme.

What a verifier reads of a chain (tvmm.owner.verify) and what a manufacturer writes when it
issues one (tvmm.hw.root_of_trust): the extensions of arc 1.3.6.1.4.1.3704.1 encoded the
way AMD's key server encodes them (INTEGERs for the struct version and SPLs, an IA5String
product name, the raw 64-byte chip id as hwID), and RSASSA-PSS with SHA-384, MGF1-SHA-384
and a 48-byte salt for every RSA signature.  Data and parsing only: no keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tvmm.abi.report import TcbVersion

PRODUCT_NAME = "tvmm-Milan"
RSA_BITS = 4096
CHIP_ID_SIZE = 64

_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{_ARC}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{_ARC}.2")
OID_BL_SPL = x509.ObjectIdentifier(f"{_ARC}.3.1")
OID_TEE_SPL = x509.ObjectIdentifier(f"{_ARC}.3.2")
OID_SNP_SPL = x509.ObjectIdentifier(f"{_ARC}.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier(f"{_ARC}.3.8")
OID_HW_ID = x509.ObjectIdentifier(f"{_ARC}.4")
# SPL slots AMD reserves (always 0 on Milan); written so our VCEK has AMD's shape.
OID_SPARE_SPLS = tuple(x509.ObjectIdentifier(f"{_ARC}.3.{n}") for n in (4, 5, 6, 7))

PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
"""The one signature scheme of the chain (RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48)."""


def chip_id_for(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 64-byte chip id: SHA-512 of the chip key's DER SubjectPublicKeyInfo."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha512(spki).digest()


def der_integer(value: int) -> bytes:
    """DER INTEGER for a small non-negative value (AMD's SPL and version extensions)."""
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise ValueError(f"{value!r} is not a small non-negative integer")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # sign byte when bit 7 is set
    return bytes((0x02, len(body))) + body


def der_ia5string(text: str) -> bytes:
    """DER IA5String (AMD's productName), short form only."""
    body = text.encode("ascii")
    if len(body) > 127:
        raise ValueError("IA5String too long for the short form")
    return bytes((0x16, len(body))) + body


def _der_body(data: bytes, tag: int, what: str) -> bytes:
    if len(data) < 2 or data[0] != tag or data[1] > 127 or data[1] != len(data) - 2:
        raise ValueError(f"{what} is not a short-form DER value with tag {tag:#04x}")
    return data[2:]


def parse_der_integer(data: bytes) -> int:
    """Strict inverse of der_integer: minimal encoding, non-negative."""
    body = _der_body(data, 0x02, "INTEGER")
    if not body or body[0] & 0x80 or (len(body) > 1 and body[0] == 0 and not body[1] & 0x80):
        raise ValueError("INTEGER is empty, negative or not minimally encoded")
    return int.from_bytes(body, "big")


@dataclass(frozen=True)
class VcekInfo:
    """What a VCEK certifies about its chip, decoded from AMD's extensions."""

    struct_version: int
    product_name: str
    tcb: TcbVersion
    hw_id: bytes


def vcek_info(cert: x509.Certificate) -> VcekInfo:
    """Decode a VCEK's AMD extensions strictly; ValueError names what is wrong.

    hwID is AMD's raw 64-byte chip id; a DER OCTET STRING wrapping it is accepted too.
    """

    def value(oid: x509.ObjectIdentifier) -> bytes:
        try:
            extension = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            raise ValueError(f"VCEK lacks extension {oid.dotted_string}") from None
        if not isinstance(extension, x509.UnrecognizedExtension):
            raise ValueError(f"VCEK extension {oid.dotted_string} has an unexpected type")
        return extension.value

    def spl(oid: x509.ObjectIdentifier) -> int:
        level = parse_der_integer(value(oid))
        if level > 0xFF:
            raise ValueError(f"VCEK SPL {oid.dotted_string} = {level} does not fit a byte")
        return level

    hw_id = value(OID_HW_ID)
    if len(hw_id) == CHIP_ID_SIZE + 2:
        hw_id = _der_body(hw_id, 0x04, "hwID")
    if len(hw_id) != CHIP_ID_SIZE:
        raise ValueError(f"VCEK hwID is {len(hw_id)} bytes, expected {CHIP_ID_SIZE}")
    try:
        product = _der_body(value(OID_PRODUCT_NAME), 0x16, "productName").decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("VCEK productName is not ASCII") from None
    return VcekInfo(
        struct_version=parse_der_integer(value(OID_STRUCT_VERSION)),
        product_name=product,
        tcb=TcbVersion(
            boot_loader=spl(OID_BL_SPL),
            tee=spl(OID_TEE_SPL),
            snp=spl(OID_SNP_SPL),
            microcode=spl(OID_UCODE_SPL),
        ),
        hw_id=hw_id,
    )
