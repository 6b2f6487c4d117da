//! A port of PostgreSQL's default text-search parser (`src/backend/tsearch/wparser_def.c`,
//! the `default` parser behind every built-in configuration), table for table.
//!
//! The parser is a table-driven state machine with a stack of saved positions: a state
//! tries its actions in order, each guarded by a character-class test; PUSH saves the
//! position so a failed guess (a host that turns out not to be one) can POP back and try
//! the state's next action. Rather than re-deriving its behaviour, this file transcribes
//! the action tables and the driver (`TParserGet`) literally, so every quirk survives:
//! `a-b` first yields the whole hyphenated word and then re-parses its parts, `1.2.3` is a
//! version but `1.2.3.` ends as a version plus a blank, `<script>` switches following text
//! to blanks until `</script`, an e-mail address is recognised by a nested parse of the
//! host after `@`, and so on.
//!
//! Character classes (what `iswalpha`/`iswdigit`/`iswspace`/`iswxdigit` say under the
//! database's LC_CTYPE, and `p_isspecial`: zero display width or a listed spacing mark)
//! are not computed here: the caller supplies them per character, read from the target
//! server (see `probe.rs`), so the result follows that server's locale and Unicode tables.

/// Class bits of one character, as the server's parser sees it.
pub(crate) mod class {
    /// `iswalpha` (non-ASCII in a C locale counts as a letter, as in PostgreSQL).
    pub const ALPHA: u8 = 1;
    /// `iswdigit`.
    pub const DIGIT: u8 = 2;
    /// `p_isspecial`: zero display width or a spacing combining mark; joins words.
    pub const SPECIAL: u8 = 4;
    /// `iswspace`.
    pub const SPACE: u8 = 8;
    /// `iswxdigit`.
    pub const XDIGIT: u8 = 16;
    /// Not verified against the server: a text containing it is left to PostgreSQL.
    pub const UNVERIFIED: u8 = 128;
}

/// Token types, numbered as `ts_token_type('default')` numbers them.
pub(crate) mod tok {
    pub const ASCIIWORD: u8 = 1;
    pub const WORD: u8 = 2;
    pub const NUMWORD: u8 = 3;
    pub const EMAIL: u8 = 4;
    pub const URL: u8 = 5;
    pub const HOST: u8 = 6;
    pub const SCIENTIFIC: u8 = 7;
    pub const VERSIONNUMBER: u8 = 8;
    pub const NUMPARTHWORD: u8 = 9;
    pub const PARTHWORD: u8 = 10;
    pub const ASCIIPARTHWORD: u8 = 11;
    pub const SPACE: u8 = 12;
    pub const TAG: u8 = 13;
    pub const PROTOCOL: u8 = 14;
    pub const NUMHWORD: u8 = 15;
    pub const ASCIIHWORD: u8 = 16;
    pub const HWORD: u8 = 17;
    pub const URLPATH: u8 = 18;
    pub const FILEPATH: u8 = 19;
    pub const DECIMAL: u8 = 20;
    pub const SIGNEDINT: u8 = 21;
    pub const UNSIGNEDINT: u8 = 22;
    pub const XMLENTITY: u8 = 23;
    /// The highest token type of the default parser.
    pub const LAST: u8 = 23;

    /// The aliases `ts_token_type('default')` reports, index = token type. The builder
    /// checks the server's list against this one: a parser with other token types is not
    /// the parser ported here.
    pub const ALIASES: [&str; 24] = [
        "",
        "asciiword",
        "word",
        "numword",
        "email",
        "url",
        "host",
        "sfloat",
        "version",
        "hword_numpart",
        "hword_part",
        "hword_asciipart",
        "blank",
        "tag",
        "protocol",
        "numhword",
        "asciihword",
        "hword",
        "url_path",
        "file",
        "float",
        "int",
        "uint",
        "entity",
    ];
}

/// One character of the text being parsed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ch {
    /// Byte offset in the text.
    pub off: u32,
    /// UTF-8 length in bytes; 0 for the end-of-text sentinel.
    pub len: u8,
    /// The byte itself when `len == 1`, else 0.
    pub byte: u8,
    /// `class::*` bits.
    pub class: u8,
}

/// A token: its type and its byte range in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub ty: u8,
    pub start: usize,
    pub len: usize,
}

// Action flags, as in wparser_def.c.
const A_NEXT: u8 = 0x00;
const A_BINGO: u8 = 0x01;
const A_POP: u8 = 0x02;
const A_PUSH: u8 = 0x04;
const A_RERUN: u8 = 0x08;
const A_CLEAR: u8 = 0x10;
const A_MERGE: u8 = 0x20;
const A_CLRALL: u8 = 0x40;

/// The guard of an action (`TParserCharTest`); `Any` is the C table's NULL: always true.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Eof,
    Eq(u8),
    Ignore,
    AscLet,
    Alpha,
    Digit,
    Alnum,
    NotAlnum,
    Special,
    Space,
    XDigit,
    StopHost,
    Host,
    UrlPath,
    UrlChar,
    Any,
}

/// The special handler of an action (`TParserSpecial`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    None,
    Tags,
    FUrl,
    Hyphen,
    VerVersion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum St {
    Base,
    InNumWord,
    InAsciiWord,
    InWord,
    InUnsignedInt,
    InSignedIntFirst,
    InSignedInt,
    InSpace,
    InUDecimalFirst,
    InUDecimal,
    InDecimalFirst,
    InDecimal,
    InVerVersion,
    InSVerVersion,
    InVersionFirst,
    InVersion,
    InMantissaFirst,
    InMantissaSign,
    InMantissa,
    InXMLEntityFirst,
    InXMLEntity,
    InXMLEntityNumFirst,
    InXMLEntityNum,
    InXMLEntityHexNumFirst,
    InXMLEntityHexNum,
    InXMLEntityEnd,
    InTagFirst,
    InXMLBegin,
    InTagCloseFirst,
    InTagName,
    InTagBeginEnd,
    InTag,
    InTagEscapeK,
    InTagEscapeKK,
    InTagBackSleshed,
    InTagEnd,
    InCommentFirst,
    InCommentLast,
    InComment,
    InCloseCommentFirst,
    InCloseCommentLast,
    InCommentEnd,
    InHostFirstDomain,
    InHostDomainSecond,
    InHostDomain,
    InPortFirst,
    InPort,
    InHostFirstAN,
    InHost,
    InEmail,
    InFileFirst,
    InFileTwiddle,
    InPathFirst,
    InPathFirstFirst,
    InPathSecond,
    InFile,
    InFileNext,
    InURLPathFirst,
    InURLPathStart,
    InURLPath,
    InFURL,
    InProtocolFirst,
    InProtocolSecond,
    InProtocolEnd,
    InHyphenAsciiWordFirst,
    InHyphenAsciiWord,
    InHyphenWordFirst,
    InHyphenWord,
    InHyphenNumWordFirst,
    InHyphenNumWord,
    InHyphenDigitLookahead,
    InParseHyphen,
    InParseHyphenHyphen,
    InHyphenWordPart,
    InHyphenAsciiWordPart,
    InHyphenNumWordPart,
    InHyphenUnsignedInt,
    /// "No state change" in an action.
    Null,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    test: Test,
    flags: u8,
    to: St,
    ty: u8,
    special: Special,
}

const fn it(test: Test, flags: u8, to: St, ty: u8) -> Item {
    Item {
        test,
        flags,
        to,
        ty,
        special: Special::None,
    }
}

const fn sp(test: Test, flags: u8, to: St, ty: u8, special: Special) -> Item {
    Item {
        test,
        flags,
        to,
        ty,
        special,
    }
}

use tok::*;
use St::*;
use Test::*;

// The action tables, in wparser_def.c's order. Order matters: the first action whose test
// passes wins, and a POP resumes at the action after the one that pushed.

static BASE: [Item; 13] = [
    it(Eof, A_NEXT, Null, 0),
    it(Eq(b'<'), A_PUSH, InTagFirst, 0),
    it(Ignore, A_NEXT, InSpace, 0),
    it(AscLet, A_NEXT, InAsciiWord, 0),
    it(Alpha, A_NEXT, InWord, 0),
    it(Digit, A_NEXT, InUnsignedInt, 0),
    it(Eq(b'-'), A_PUSH, InSignedIntFirst, 0),
    it(Eq(b'+'), A_PUSH, InSignedIntFirst, 0),
    it(Eq(b'&'), A_PUSH, InXMLEntityFirst, 0),
    it(Eq(b'~'), A_PUSH, InFileTwiddle, 0),
    it(Eq(b'/'), A_PUSH, InFileFirst, 0),
    it(Eq(b'.'), A_PUSH, InPathFirstFirst, 0),
    it(Any, A_NEXT, InSpace, 0),
];

static IN_NUM_WORD: [Item; 8] = [
    it(Eof, A_BINGO, Base, NUMWORD),
    it(Alnum, A_NEXT, InNumWord, 0),
    it(Special, A_NEXT, InNumWord, 0),
    it(Eq(b'@'), A_PUSH, InEmail, 0),
    it(Eq(b'/'), A_PUSH, InFileFirst, 0),
    it(Eq(b'.'), A_PUSH, InFileNext, 0),
    it(Eq(b'-'), A_PUSH, InHyphenNumWordFirst, 0),
    it(Any, A_BINGO, Base, NUMWORD),
];

static IN_ASCII_WORD: [Item; 15] = [
    it(Eof, A_BINGO, Base, ASCIIWORD),
    it(AscLet, A_NEXT, Null, 0),
    it(Eq(b'.'), A_PUSH, InHostFirstDomain, 0),
    it(Eq(b'.'), A_PUSH, InFileNext, 0),
    it(Eq(b'-'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'-'), A_PUSH, InHyphenAsciiWordFirst, 0),
    it(Eq(b'_'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'@'), A_PUSH, InEmail, 0),
    it(Eq(b':'), A_PUSH, InProtocolFirst, 0),
    it(Eq(b'/'), A_PUSH, InFileFirst, 0),
    it(Digit, A_PUSH, InHost, 0),
    it(Digit, A_NEXT, InNumWord, 0),
    it(Alpha, A_NEXT, InWord, 0),
    it(Special, A_NEXT, InWord, 0),
    it(Any, A_BINGO, Base, ASCIIWORD),
];

static IN_WORD: [Item; 6] = [
    it(Eof, A_BINGO, Base, WORD),
    it(Alpha, A_NEXT, Null, 0),
    it(Special, A_NEXT, Null, 0),
    it(Digit, A_NEXT, InNumWord, 0),
    it(Eq(b'-'), A_PUSH, InHyphenWordFirst, 0),
    it(Any, A_BINGO, Base, WORD),
];

static IN_UNSIGNED_INT: [Item; 14] = [
    it(Eof, A_BINGO, Base, UNSIGNEDINT),
    it(Digit, A_NEXT, Null, 0),
    it(Eq(b'.'), A_PUSH, InHostFirstDomain, 0),
    it(Eq(b'.'), A_PUSH, InUDecimalFirst, 0),
    it(Eq(b'e'), A_PUSH, InMantissaFirst, 0),
    it(Eq(b'E'), A_PUSH, InMantissaFirst, 0),
    it(Eq(b'-'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'_'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'@'), A_PUSH, InEmail, 0),
    it(AscLet, A_PUSH, InHost, 0),
    it(Alpha, A_NEXT, InNumWord, 0),
    it(Special, A_NEXT, InNumWord, 0),
    it(Eq(b'/'), A_PUSH, InFileFirst, 0),
    it(Any, A_BINGO, Base, UNSIGNEDINT),
];

static IN_SIGNED_INT_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_NEXT | A_CLEAR, InSignedInt, 0),
    it(Any, A_POP, Null, 0),
];

static IN_SIGNED_INT: [Item; 6] = [
    it(Eof, A_BINGO, Base, SIGNEDINT),
    it(Digit, A_NEXT, Null, 0),
    it(Eq(b'.'), A_PUSH, InDecimalFirst, 0),
    it(Eq(b'e'), A_PUSH, InMantissaFirst, 0),
    it(Eq(b'E'), A_PUSH, InMantissaFirst, 0),
    it(Any, A_BINGO, Base, SIGNEDINT),
];

static IN_SPACE: [Item; 9] = [
    it(Eof, A_BINGO, Base, SPACE),
    it(Eq(b'<'), A_BINGO, Base, SPACE),
    it(Ignore, A_NEXT, Null, 0),
    it(Eq(b'-'), A_BINGO, Base, SPACE),
    it(Eq(b'+'), A_BINGO, Base, SPACE),
    it(Eq(b'&'), A_BINGO, Base, SPACE),
    it(Eq(b'/'), A_BINGO, Base, SPACE),
    it(NotAlnum, A_NEXT, InSpace, 0),
    it(Any, A_BINGO, Base, SPACE),
];

static IN_UDECIMAL_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_CLEAR, InUDecimal, 0),
    it(Any, A_POP, Null, 0),
];

static IN_UDECIMAL: [Item; 6] = [
    it(Eof, A_BINGO, Base, DECIMAL),
    it(Digit, A_NEXT, InUDecimal, 0),
    it(Eq(b'.'), A_PUSH, InVersionFirst, 0),
    it(Eq(b'e'), A_PUSH, InMantissaFirst, 0),
    it(Eq(b'E'), A_PUSH, InMantissaFirst, 0),
    it(Any, A_BINGO, Base, DECIMAL),
];

static IN_DECIMAL_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_CLEAR, InDecimal, 0),
    it(Any, A_POP, Null, 0),
];

static IN_DECIMAL: [Item; 6] = [
    it(Eof, A_BINGO, Base, DECIMAL),
    it(Digit, A_NEXT, InDecimal, 0),
    it(Eq(b'.'), A_PUSH, InVerVersion, 0),
    it(Eq(b'e'), A_PUSH, InMantissaFirst, 0),
    it(Eq(b'E'), A_PUSH, InMantissaFirst, 0),
    it(Any, A_BINGO, Base, DECIMAL),
];

static IN_VER_VERSION: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    sp(Digit, A_RERUN, InSVerVersion, 0, Special::VerVersion),
    it(Any, A_POP, Null, 0),
];

static IN_SVER_VERSION: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_BINGO | A_CLRALL, InUnsignedInt, SPACE),
    it(Any, A_NEXT, Null, 0),
];

static IN_VERSION_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_CLEAR, InVersion, 0),
    it(Any, A_POP, Null, 0),
];

static IN_VERSION: [Item; 4] = [
    it(Eof, A_BINGO, Base, VERSIONNUMBER),
    it(Digit, A_NEXT, InVersion, 0),
    it(Eq(b'.'), A_PUSH, InVersionFirst, 0),
    it(Any, A_BINGO, Base, VERSIONNUMBER),
];

static IN_MANTISSA_FIRST: [Item; 5] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_CLEAR, InMantissa, 0),
    it(Eq(b'+'), A_NEXT, InMantissaSign, 0),
    it(Eq(b'-'), A_NEXT, InMantissaSign, 0),
    it(Any, A_POP, Null, 0),
];

static IN_MANTISSA_SIGN: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_CLEAR, InMantissa, 0),
    it(Any, A_POP, Null, 0),
];

static IN_MANTISSA: [Item; 3] = [
    it(Eof, A_BINGO, Base, SCIENTIFIC),
    it(Digit, A_NEXT, InMantissa, 0),
    it(Any, A_BINGO, Base, SCIENTIFIC),
];

static IN_XML_ENTITY_FIRST: [Item; 6] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'#'), A_NEXT, InXMLEntityNumFirst, 0),
    it(AscLet, A_NEXT, InXMLEntity, 0),
    it(Eq(b':'), A_NEXT, InXMLEntity, 0),
    it(Eq(b'_'), A_NEXT, InXMLEntity, 0),
    it(Any, A_POP, Null, 0),
];

static IN_XML_ENTITY: [Item; 8] = [
    it(Eof, A_POP, Null, 0),
    it(Alnum, A_NEXT, InXMLEntity, 0),
    it(Eq(b':'), A_NEXT, InXMLEntity, 0),
    it(Eq(b'_'), A_NEXT, InXMLEntity, 0),
    it(Eq(b'.'), A_NEXT, InXMLEntity, 0),
    it(Eq(b'-'), A_NEXT, InXMLEntity, 0),
    it(Eq(b';'), A_NEXT, InXMLEntityEnd, 0),
    it(Any, A_POP, Null, 0),
];

static IN_XML_ENTITY_NUM_FIRST: [Item; 5] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'x'), A_NEXT, InXMLEntityHexNumFirst, 0),
    it(Eq(b'X'), A_NEXT, InXMLEntityHexNumFirst, 0),
    it(Digit, A_NEXT, InXMLEntityNum, 0),
    it(Any, A_POP, Null, 0),
];

static IN_XML_ENTITY_HEX_NUM_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(XDigit, A_NEXT, InXMLEntityHexNum, 0),
    it(Any, A_POP, Null, 0),
];

static IN_XML_ENTITY_NUM: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_NEXT, InXMLEntityNum, 0),
    it(Eq(b';'), A_NEXT, InXMLEntityEnd, 0),
    it(Any, A_POP, Null, 0),
];

static IN_XML_ENTITY_HEX_NUM: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(XDigit, A_NEXT, InXMLEntityHexNum, 0),
    it(Eq(b';'), A_NEXT, InXMLEntityEnd, 0),
    it(Any, A_POP, Null, 0),
];

static IN_XML_ENTITY_END: [Item; 1] = [it(Any, A_BINGO | A_CLEAR, Base, XMLENTITY)];

static IN_TAG_FIRST: [Item; 8] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'/'), A_PUSH, InTagCloseFirst, 0),
    it(Eq(b'!'), A_PUSH, InCommentFirst, 0),
    it(Eq(b'?'), A_PUSH, InXMLBegin, 0),
    it(AscLet, A_PUSH, InTagName, 0),
    it(Eq(b':'), A_PUSH, InTagName, 0),
    it(Eq(b'_'), A_PUSH, InTagName, 0),
    it(Any, A_POP, Null, 0),
];

static IN_XML_BEGIN: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'x'), A_NEXT, InTag, 0),
    it(Any, A_POP, Null, 0),
];

static IN_TAG_CLOSE_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_NEXT, InTagName, 0),
    it(Any, A_POP, Null, 0),
];

static IN_TAG_NAME: [Item; 10] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'/'), A_NEXT, InTagBeginEnd, 0),
    sp(Eq(b'>'), A_NEXT, InTagEnd, 0, Special::Tags),
    sp(Space, A_NEXT, InTag, 0, Special::Tags),
    it(Alnum, A_NEXT, Null, 0),
    it(Eq(b':'), A_NEXT, Null, 0),
    it(Eq(b'_'), A_NEXT, Null, 0),
    it(Eq(b'.'), A_NEXT, Null, 0),
    it(Eq(b'-'), A_NEXT, Null, 0),
    it(Any, A_POP, Null, 0),
];

static IN_TAG_BEGIN_END: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'>'), A_NEXT, InTagEnd, 0),
    it(Any, A_POP, Null, 0),
];

static IN_TAG: [Item; 19] = [
    it(Eof, A_POP, Null, 0),
    sp(Eq(b'>'), A_NEXT, InTagEnd, 0, Special::Tags),
    it(Eq(b'\''), A_NEXT, InTagEscapeK, 0),
    it(Eq(b'"'), A_NEXT, InTagEscapeKK, 0),
    it(AscLet, A_NEXT, Null, 0),
    it(Digit, A_NEXT, Null, 0),
    it(Eq(b'='), A_NEXT, Null, 0),
    it(Eq(b'-'), A_NEXT, Null, 0),
    it(Eq(b'_'), A_NEXT, Null, 0),
    it(Eq(b'#'), A_NEXT, Null, 0),
    it(Eq(b'/'), A_NEXT, Null, 0),
    it(Eq(b':'), A_NEXT, Null, 0),
    it(Eq(b'.'), A_NEXT, Null, 0),
    it(Eq(b'&'), A_NEXT, Null, 0),
    it(Eq(b'?'), A_NEXT, Null, 0),
    it(Eq(b'%'), A_NEXT, Null, 0),
    it(Eq(b'~'), A_NEXT, Null, 0),
    sp(Space, A_NEXT, Null, 0, Special::Tags),
    it(Any, A_POP, Null, 0),
];

static IN_TAG_ESCAPE_K: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'\\'), A_PUSH, InTagBackSleshed, 0),
    it(Eq(b'\''), A_NEXT, InTag, 0),
    it(Any, A_NEXT, InTagEscapeK, 0),
];

static IN_TAG_ESCAPE_KK: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'\\'), A_PUSH, InTagBackSleshed, 0),
    it(Eq(b'"'), A_NEXT, InTag, 0),
    it(Any, A_NEXT, InTagEscapeKK, 0),
];

static IN_TAG_BACK_SLESHED: [Item; 2] = [it(Eof, A_POP, Null, 0), it(Any, A_MERGE, Null, 0)];

static IN_TAG_END: [Item; 1] = [it(Any, A_BINGO | A_CLRALL, Base, TAG)];

static IN_COMMENT_FIRST: [Item; 5] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'-'), A_NEXT, InCommentLast, 0),
    it(Eq(b'D'), A_NEXT, InTag, 0),
    it(Eq(b'd'), A_NEXT, InTag, 0),
    it(Any, A_POP, Null, 0),
];

static IN_COMMENT_LAST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'-'), A_NEXT, InComment, 0),
    it(Any, A_POP, Null, 0),
];

static IN_COMMENT: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'-'), A_NEXT, InCloseCommentFirst, 0),
    it(Any, A_NEXT, Null, 0),
];

static IN_CLOSE_COMMENT_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'-'), A_NEXT, InCloseCommentLast, 0),
    it(Any, A_NEXT, InComment, 0),
];

static IN_CLOSE_COMMENT_LAST: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'-'), A_NEXT, Null, 0),
    it(Eq(b'>'), A_NEXT, InCommentEnd, 0),
    it(Any, A_NEXT, InComment, 0),
];

static IN_COMMENT_END: [Item; 1] = [it(Any, A_BINGO | A_CLRALL, Base, TAG)];

static IN_HOST_FIRST_DOMAIN: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_NEXT, InHostDomainSecond, 0),
    it(Digit, A_NEXT, InHost, 0),
    it(Any, A_POP, Null, 0),
];

static IN_HOST_DOMAIN_SECOND: [Item; 8] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_NEXT, InHostDomain, 0),
    it(Digit, A_PUSH, InHost, 0),
    it(Eq(b'-'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'_'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'.'), A_PUSH, InHostFirstDomain, 0),
    it(Eq(b'@'), A_PUSH, InEmail, 0),
    it(Any, A_POP, Null, 0),
];

static IN_HOST_DOMAIN: [Item; 12] = [
    it(Eof, A_BINGO | A_CLRALL, Base, HOST),
    it(AscLet, A_NEXT, InHostDomain, 0),
    it(Digit, A_PUSH, InHost, 0),
    it(Eq(b':'), A_PUSH, InPortFirst, 0),
    it(Eq(b'-'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'_'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'.'), A_PUSH, InHostFirstDomain, 0),
    it(Eq(b'@'), A_PUSH, InEmail, 0),
    it(Digit, A_POP, Null, 0),
    it(StopHost, A_BINGO | A_CLRALL, InURLPathStart, HOST),
    it(Eq(b'/'), A_PUSH, InFURL, 0),
    it(Any, A_BINGO | A_CLRALL, Base, HOST),
];

static IN_PORT_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_NEXT, InPort, 0),
    it(Any, A_POP, Null, 0),
];

static IN_PORT: [Item; 5] = [
    it(Eof, A_BINGO | A_CLRALL, Base, HOST),
    it(Digit, A_NEXT, InPort, 0),
    it(StopHost, A_BINGO | A_CLRALL, InURLPathStart, HOST),
    it(Eq(b'/'), A_PUSH, InFURL, 0),
    it(Any, A_BINGO | A_CLRALL, Base, HOST),
];

static IN_HOST_FIRST_AN: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_NEXT, InHost, 0),
    it(AscLet, A_NEXT, InHost, 0),
    it(Any, A_POP, Null, 0),
];

static IN_HOST: [Item; 8] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_NEXT, InHost, 0),
    it(AscLet, A_NEXT, InHost, 0),
    it(Eq(b'@'), A_PUSH, InEmail, 0),
    it(Eq(b'.'), A_PUSH, InHostFirstDomain, 0),
    it(Eq(b'-'), A_PUSH, InHostFirstAN, 0),
    it(Eq(b'_'), A_PUSH, InHostFirstAN, 0),
    it(Any, A_POP, Null, 0),
];

static IN_EMAIL: [Item; 3] = [
    it(StopHost, A_POP, Null, 0),
    it(Host, A_BINGO | A_CLRALL, Base, EMAIL),
    it(Any, A_POP, Null, 0),
];

static IN_FILE_FIRST: [Item; 7] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_NEXT, InFile, 0),
    it(Digit, A_NEXT, InFile, 0),
    it(Eq(b'.'), A_NEXT, InPathFirst, 0),
    it(Eq(b'_'), A_NEXT, InFile, 0),
    it(Eq(b'~'), A_PUSH, InFileTwiddle, 0),
    it(Any, A_POP, Null, 0),
];

static IN_FILE_TWIDDLE: [Item; 6] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_NEXT, InFile, 0),
    it(Digit, A_NEXT, InFile, 0),
    it(Eq(b'_'), A_NEXT, InFile, 0),
    it(Eq(b'/'), A_NEXT, InFileFirst, 0),
    it(Any, A_POP, Null, 0),
];

static IN_PATH_FIRST: [Item; 7] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_NEXT, InFile, 0),
    it(Digit, A_NEXT, InFile, 0),
    it(Eq(b'_'), A_NEXT, InFile, 0),
    it(Eq(b'.'), A_NEXT, InPathSecond, 0),
    it(Eq(b'/'), A_NEXT, InFileFirst, 0),
    it(Any, A_POP, Null, 0),
];

static IN_PATH_FIRST_FIRST: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'.'), A_NEXT, InPathSecond, 0),
    it(Eq(b'/'), A_NEXT, InFileFirst, 0),
    it(Any, A_POP, Null, 0),
];

static IN_PATH_SECOND: [Item; 5] = [
    it(Eof, A_BINGO | A_CLEAR, Base, FILEPATH),
    it(Eq(b'/'), A_NEXT | A_PUSH, InFileFirst, 0),
    it(Eq(b'/'), A_BINGO | A_CLEAR, Base, FILEPATH),
    it(Space, A_BINGO | A_CLEAR, Base, FILEPATH),
    it(Any, A_POP, Null, 0),
];

static IN_FILE: [Item; 8] = [
    it(Eof, A_BINGO, Base, FILEPATH),
    it(AscLet, A_NEXT, InFile, 0),
    it(Digit, A_NEXT, InFile, 0),
    it(Eq(b'.'), A_PUSH, InFileNext, 0),
    it(Eq(b'_'), A_NEXT, InFile, 0),
    it(Eq(b'-'), A_NEXT, InFile, 0),
    it(Eq(b'/'), A_PUSH, InFileFirst, 0),
    it(Any, A_BINGO, Base, FILEPATH),
];

static IN_FILE_NEXT: [Item; 5] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_CLEAR, InFile, 0),
    it(Digit, A_CLEAR, InFile, 0),
    it(Eq(b'_'), A_CLEAR, InFile, 0),
    it(Any, A_POP, Null, 0),
];

static IN_URL_PATH_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(UrlChar, A_NEXT, InURLPath, 0),
    it(Any, A_POP, Null, 0),
];

static IN_URL_PATH_START: [Item; 1] = [it(Any, A_NEXT, InURLPath, 0)];

static IN_URL_PATH: [Item; 3] = [
    it(Eof, A_BINGO, Base, URLPATH),
    it(UrlChar, A_NEXT, InURLPath, 0),
    it(Any, A_BINGO, Base, URLPATH),
];

static IN_FURL: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    sp(UrlPath, A_BINGO | A_CLRALL, Base, URL, Special::FUrl),
    it(Any, A_POP, Null, 0),
];

static IN_PROTOCOL_FIRST: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'/'), A_NEXT, InProtocolSecond, 0),
    it(Any, A_POP, Null, 0),
];

static IN_PROTOCOL_SECOND: [Item; 3] = [
    it(Eof, A_POP, Null, 0),
    it(Eq(b'/'), A_NEXT, InProtocolEnd, 0),
    it(Any, A_POP, Null, 0),
];

static IN_PROTOCOL_END: [Item; 1] = [it(Any, A_BINGO | A_CLRALL, Base, PROTOCOL)];

static IN_HYPHEN_ASCII_WORD_FIRST: [Item; 5] = [
    it(Eof, A_POP, Null, 0),
    it(AscLet, A_NEXT, InHyphenAsciiWord, 0),
    it(Alpha, A_NEXT, InHyphenWord, 0),
    it(Digit, A_NEXT, InHyphenDigitLookahead, 0),
    it(Any, A_POP, Null, 0),
];

static IN_HYPHEN_ASCII_WORD: [Item; 7] = [
    sp(
        Eof,
        A_BINGO | A_CLRALL,
        InParseHyphen,
        ASCIIHWORD,
        Special::Hyphen,
    ),
    it(AscLet, A_NEXT, InHyphenAsciiWord, 0),
    it(Alpha, A_NEXT, InHyphenWord, 0),
    it(Special, A_NEXT, InHyphenWord, 0),
    it(Digit, A_NEXT, InHyphenNumWord, 0),
    it(Eq(b'-'), A_PUSH, InHyphenAsciiWordFirst, 0),
    sp(
        Any,
        A_BINGO | A_CLRALL,
        InParseHyphen,
        ASCIIHWORD,
        Special::Hyphen,
    ),
];

static IN_HYPHEN_WORD_FIRST: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Alpha, A_NEXT, InHyphenWord, 0),
    it(Digit, A_NEXT, InHyphenDigitLookahead, 0),
    it(Any, A_POP, Null, 0),
];

static IN_HYPHEN_WORD: [Item; 6] = [
    sp(
        Eof,
        A_BINGO | A_CLRALL,
        InParseHyphen,
        HWORD,
        Special::Hyphen,
    ),
    it(Alpha, A_NEXT, InHyphenWord, 0),
    it(Special, A_NEXT, InHyphenWord, 0),
    it(Digit, A_NEXT, InHyphenNumWord, 0),
    it(Eq(b'-'), A_PUSH, InHyphenWordFirst, 0),
    sp(
        Any,
        A_BINGO | A_CLRALL,
        InParseHyphen,
        HWORD,
        Special::Hyphen,
    ),
];

static IN_HYPHEN_NUM_WORD_FIRST: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Alpha, A_NEXT, InHyphenNumWord, 0),
    it(Digit, A_NEXT, InHyphenDigitLookahead, 0),
    it(Any, A_POP, Null, 0),
];

static IN_HYPHEN_NUM_WORD: [Item; 5] = [
    sp(
        Eof,
        A_BINGO | A_CLRALL,
        InParseHyphen,
        NUMHWORD,
        Special::Hyphen,
    ),
    it(Alnum, A_NEXT, InHyphenNumWord, 0),
    it(Special, A_NEXT, InHyphenNumWord, 0),
    it(Eq(b'-'), A_PUSH, InHyphenNumWordFirst, 0),
    sp(
        Any,
        A_BINGO | A_CLRALL,
        InParseHyphen,
        NUMHWORD,
        Special::Hyphen,
    ),
];

static IN_HYPHEN_DIGIT_LOOKAHEAD: [Item; 5] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_NEXT, InHyphenDigitLookahead, 0),
    it(Alpha, A_NEXT, InHyphenNumWord, 0),
    it(Special, A_NEXT, InHyphenNumWord, 0),
    it(Any, A_POP, Null, 0),
];

static IN_PARSE_HYPHEN: [Item; 6] = [
    it(Eof, A_RERUN, Base, 0),
    it(AscLet, A_NEXT, InHyphenAsciiWordPart, 0),
    it(Alpha, A_NEXT, InHyphenWordPart, 0),
    it(Digit, A_PUSH, InHyphenUnsignedInt, 0),
    it(Eq(b'-'), A_PUSH, InParseHyphenHyphen, 0),
    it(Any, A_RERUN, Base, 0),
];

static IN_PARSE_HYPHEN_HYPHEN: [Item; 4] = [
    it(Eof, A_POP, Null, 0),
    it(Alnum, A_BINGO | A_CLEAR, InParseHyphen, SPACE),
    it(Special, A_BINGO | A_CLEAR, InParseHyphen, SPACE),
    it(Any, A_POP, Null, 0),
];

static IN_HYPHEN_WORD_PART: [Item; 5] = [
    it(Eof, A_BINGO, Base, PARTHWORD),
    it(Alpha, A_NEXT, InHyphenWordPart, 0),
    it(Special, A_NEXT, InHyphenWordPart, 0),
    it(Digit, A_NEXT, InHyphenNumWordPart, 0),
    it(Any, A_BINGO, InParseHyphen, PARTHWORD),
];

static IN_HYPHEN_ASCII_WORD_PART: [Item; 6] = [
    it(Eof, A_BINGO, Base, ASCIIPARTHWORD),
    it(AscLet, A_NEXT, InHyphenAsciiWordPart, 0),
    it(Alpha, A_NEXT, InHyphenWordPart, 0),
    it(Special, A_NEXT, InHyphenWordPart, 0),
    it(Digit, A_NEXT, InHyphenNumWordPart, 0),
    it(Any, A_BINGO, InParseHyphen, ASCIIPARTHWORD),
];

static IN_HYPHEN_NUM_WORD_PART: [Item; 4] = [
    it(Eof, A_BINGO, Base, NUMPARTHWORD),
    it(Alnum, A_NEXT, InHyphenNumWordPart, 0),
    it(Special, A_NEXT, InHyphenNumWordPart, 0),
    it(Any, A_BINGO, InParseHyphen, NUMPARTHWORD),
];

static IN_HYPHEN_UNSIGNED_INT: [Item; 5] = [
    it(Eof, A_POP, Null, 0),
    it(Digit, A_NEXT, Null, 0),
    it(Alpha, A_CLEAR, InHyphenNumWordPart, 0),
    it(Special, A_CLEAR, InHyphenNumWordPart, 0),
    it(Any, A_POP, Null, 0),
];

/// The action list of a state (`Actions[]` in C).
fn actions(state: St) -> &'static [Item] {
    match state {
        Base => &BASE,
        InNumWord => &IN_NUM_WORD,
        InAsciiWord => &IN_ASCII_WORD,
        InWord => &IN_WORD,
        InUnsignedInt => &IN_UNSIGNED_INT,
        InSignedIntFirst => &IN_SIGNED_INT_FIRST,
        InSignedInt => &IN_SIGNED_INT,
        InSpace => &IN_SPACE,
        InUDecimalFirst => &IN_UDECIMAL_FIRST,
        InUDecimal => &IN_UDECIMAL,
        InDecimalFirst => &IN_DECIMAL_FIRST,
        InDecimal => &IN_DECIMAL,
        InVerVersion => &IN_VER_VERSION,
        InSVerVersion => &IN_SVER_VERSION,
        InVersionFirst => &IN_VERSION_FIRST,
        InVersion => &IN_VERSION,
        InMantissaFirst => &IN_MANTISSA_FIRST,
        InMantissaSign => &IN_MANTISSA_SIGN,
        InMantissa => &IN_MANTISSA,
        InXMLEntityFirst => &IN_XML_ENTITY_FIRST,
        InXMLEntity => &IN_XML_ENTITY,
        InXMLEntityNumFirst => &IN_XML_ENTITY_NUM_FIRST,
        InXMLEntityNum => &IN_XML_ENTITY_NUM,
        InXMLEntityHexNumFirst => &IN_XML_ENTITY_HEX_NUM_FIRST,
        InXMLEntityHexNum => &IN_XML_ENTITY_HEX_NUM,
        InXMLEntityEnd => &IN_XML_ENTITY_END,
        InTagFirst => &IN_TAG_FIRST,
        InXMLBegin => &IN_XML_BEGIN,
        InTagCloseFirst => &IN_TAG_CLOSE_FIRST,
        InTagName => &IN_TAG_NAME,
        InTagBeginEnd => &IN_TAG_BEGIN_END,
        InTag => &IN_TAG,
        InTagEscapeK => &IN_TAG_ESCAPE_K,
        InTagEscapeKK => &IN_TAG_ESCAPE_KK,
        InTagBackSleshed => &IN_TAG_BACK_SLESHED,
        InTagEnd => &IN_TAG_END,
        InCommentFirst => &IN_COMMENT_FIRST,
        InCommentLast => &IN_COMMENT_LAST,
        InComment => &IN_COMMENT,
        InCloseCommentFirst => &IN_CLOSE_COMMENT_FIRST,
        InCloseCommentLast => &IN_CLOSE_COMMENT_LAST,
        InCommentEnd => &IN_COMMENT_END,
        InHostFirstDomain => &IN_HOST_FIRST_DOMAIN,
        InHostDomainSecond => &IN_HOST_DOMAIN_SECOND,
        InHostDomain => &IN_HOST_DOMAIN,
        InPortFirst => &IN_PORT_FIRST,
        InPort => &IN_PORT,
        InHostFirstAN => &IN_HOST_FIRST_AN,
        InHost => &IN_HOST,
        InEmail => &IN_EMAIL,
        InFileFirst => &IN_FILE_FIRST,
        InFileTwiddle => &IN_FILE_TWIDDLE,
        InPathFirst => &IN_PATH_FIRST,
        InPathFirstFirst => &IN_PATH_FIRST_FIRST,
        InPathSecond => &IN_PATH_SECOND,
        InFile => &IN_FILE,
        InFileNext => &IN_FILE_NEXT,
        InURLPathFirst => &IN_URL_PATH_FIRST,
        InURLPathStart => &IN_URL_PATH_START,
        InURLPath => &IN_URL_PATH,
        InFURL => &IN_FURL,
        InProtocolFirst => &IN_PROTOCOL_FIRST,
        InProtocolSecond => &IN_PROTOCOL_SECOND,
        InProtocolEnd => &IN_PROTOCOL_END,
        InHyphenAsciiWordFirst => &IN_HYPHEN_ASCII_WORD_FIRST,
        InHyphenAsciiWord => &IN_HYPHEN_ASCII_WORD,
        InHyphenWordFirst => &IN_HYPHEN_WORD_FIRST,
        InHyphenWord => &IN_HYPHEN_WORD,
        InHyphenNumWordFirst => &IN_HYPHEN_NUM_WORD_FIRST,
        InHyphenNumWord => &IN_HYPHEN_NUM_WORD,
        InHyphenDigitLookahead => &IN_HYPHEN_DIGIT_LOOKAHEAD,
        InParseHyphen => &IN_PARSE_HYPHEN,
        InParseHyphenHyphen => &IN_PARSE_HYPHEN_HYPHEN,
        InHyphenWordPart => &IN_HYPHEN_WORD_PART,
        InHyphenAsciiWordPart => &IN_HYPHEN_ASCII_WORD_PART,
        InHyphenNumWordPart => &IN_HYPHEN_NUM_WORD_PART,
        InHyphenUnsignedInt => &IN_HYPHEN_UNSIGNED_INT,
        Null => unreachable!("TPS_Null is never a current state"),
    }
}

/// One saved parser position (`TParserPosition`). Positions are character indexes into
/// the shared `Ch` slice; C keeps a byte and a character offset that always move together.
#[derive(Clone, Copy, Debug)]
struct Pos {
    pos: usize,
    len_bytes: usize,
    len_chars: usize,
    state: St,
    /// Index of the action that pushed from this position (`pushedAtAction`).
    pushed_at: Option<u8>,
}

impl Pos {
    fn new(pos: usize, state: St) -> Self {
        Pos {
            pos,
            len_bytes: 0,
            len_chars: 0,
            state,
            pushed_at: None,
        }
    }
}

/// Number of real states (all but `Null`).
const STATES: usize = Null as usize;
/// Character keys of the dispatch table: 0 = end of text, 1..=127 = that ASCII byte,
/// 128 + class bits = a non-ASCII character of that class.
const CHAR_KEYS: usize = 128 + 32;
/// Keys also depend on the `ignore` and `wanthost` flags.
const KEYS: usize = CHAR_KEYS * 4;
/// A dispatch entry that needs the nested parse of `p_ishost` / `p_isURLPath`.
const DYNAMIC: u8 = u8::MAX;

/// The first action each state would take for each key, precomputed from the tables by
/// the same first-match rule as `TParserGet`: the driver then makes one lookup per
/// character instead of trying actions one by one. Entries whose choice depends on a
/// nested parse are `DYNAMIC` and take the linear path.
pub(crate) struct Dispatch(Box<[u8]>);

impl Dispatch {
    /// The table for these ASCII classes (non-ASCII keys carry their class in the key).
    pub(crate) fn new(ascii_class: &[u8; 128]) -> Self {
        let mut table = vec![DYNAMIC; STATES * KEYS].into_boxed_slice();
        for (s, row) in table.chunks_mut(KEYS).enumerate() {
            // SAFETY-free conversion: St is repr(u8) and s < STATES.
            let state = ALL_STATES[s];
            for (k, entry) in row.iter_mut().enumerate() {
                let ch = k % CHAR_KEYS;
                let ignore = (k / CHAR_KEYS) & 1 != 0;
                let wanthost = (k / CHAR_KEYS) & 2 != 0;
                let (eof, byte, class) = if ch == 0 {
                    (true, None, 0)
                } else if ch < 128 {
                    (false, Some(ch as u8), ascii_class[ch])
                } else {
                    (false, None, (ch - 128) as u8)
                };
                *entry = DYNAMIC;
                for (i, item) in actions(state).iter().enumerate() {
                    let hit = match item.test {
                        Any => Some(true),
                        Eof => Some(eof),
                        Eq(b) => Some(byte == Some(b)),
                        Ignore => Some(ignore),
                        AscLet => Some(byte.is_some() && class & class::ALPHA != 0),
                        Alpha => Some(class & class::ALPHA != 0),
                        Digit => Some(class & class::DIGIT != 0),
                        Alnum => Some(class & (class::ALPHA | class::DIGIT) != 0),
                        NotAlnum => Some(class & (class::ALPHA | class::DIGIT) == 0),
                        Special => Some(class & class::SPECIAL != 0),
                        Space => Some(class & class::SPACE != 0),
                        XDigit => Some(class & class::XDIGIT != 0),
                        StopHost => Some(wanthost),
                        UrlChar => Some(byte.is_some_and(is_url_char)),
                        Host | UrlPath => None,
                    };
                    match hit {
                        Some(true) => {
                            *entry = i as u8;
                            break;
                        }
                        Some(false) => continue,
                        None => break,
                    }
                }
            }
        }
        Dispatch(table)
    }

    #[inline]
    fn get(&self, state: St, ch: Ch, ignore: bool, wanthost: bool) -> u8 {
        let key = if ch.len == 0 {
            0
        } else if ch.len == 1 {
            ch.byte as usize
        } else {
            128 + (ch.class & 31) as usize
        };
        let key = key + CHAR_KEYS * (ignore as usize + 2 * wanthost as usize);
        self.0[state as usize * KEYS + key]
    }
}

static ALL_STATES: [St; STATES] = [
    Base,
    InNumWord,
    InAsciiWord,
    InWord,
    InUnsignedInt,
    InSignedIntFirst,
    InSignedInt,
    InSpace,
    InUDecimalFirst,
    InUDecimal,
    InDecimalFirst,
    InDecimal,
    InVerVersion,
    InSVerVersion,
    InVersionFirst,
    InVersion,
    InMantissaFirst,
    InMantissaSign,
    InMantissa,
    InXMLEntityFirst,
    InXMLEntity,
    InXMLEntityNumFirst,
    InXMLEntityNum,
    InXMLEntityHexNumFirst,
    InXMLEntityHexNum,
    InXMLEntityEnd,
    InTagFirst,
    InXMLBegin,
    InTagCloseFirst,
    InTagName,
    InTagBeginEnd,
    InTag,
    InTagEscapeK,
    InTagEscapeKK,
    InTagBackSleshed,
    InTagEnd,
    InCommentFirst,
    InCommentLast,
    InComment,
    InCloseCommentFirst,
    InCloseCommentLast,
    InCommentEnd,
    InHostFirstDomain,
    InHostDomainSecond,
    InHostDomain,
    InPortFirst,
    InPort,
    InHostFirstAN,
    InHost,
    InEmail,
    InFileFirst,
    InFileTwiddle,
    InPathFirst,
    InPathFirstFirst,
    InPathSecond,
    InFile,
    InFileNext,
    InURLPathFirst,
    InURLPathStart,
    InURLPath,
    InFURL,
    InProtocolFirst,
    InProtocolSecond,
    InProtocolEnd,
    InHyphenAsciiWordFirst,
    InHyphenAsciiWord,
    InHyphenWordFirst,
    InHyphenWord,
    InHyphenNumWordFirst,
    InHyphenNumWord,
    InHyphenDigitLookahead,
    InParseHyphen,
    InParseHyphenHyphen,
    InHyphenWordPart,
    InHyphenAsciiWordPart,
    InHyphenNumWordPart,
    InHyphenUnsignedInt,
];

/// `p_isurlchar`: printable ASCII except what RFC 3986 disallows.
#[inline]
fn is_url_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b)
        && !matches!(
            b,
            b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

/// The default parser over one text (`TParser`).
pub(crate) struct Parser<'a> {
    text: &'a [u8],
    /// One entry per character plus an end sentinel (`len == 0`).
    chars: &'a [Ch],
    /// Index of the sentinel: the end of the text.
    end: usize,
    /// First-match table; `None` tries actions one by one (tests compare both).
    dispatch: Option<&'a Dispatch>,
    /// The current position: the top of C's position stack.
    cur: Pos,
    /// The positions pushed below it, oldest first.
    saved: Vec<Pos>,
    /// Inside `<script>`/`<style>`: text is blank until the closing tag.
    ignore: bool,
    wanthost: bool,
    token_start: usize,
    token_bytes: usize,
    token_chars: usize,
    ty: u8,
}

impl<'a> Parser<'a> {
    /// A parser over `text`, whose characters (plus a final sentinel) are `chars`.
    pub(crate) fn new(text: &'a [u8], chars: &'a [Ch], dispatch: Option<&'a Dispatch>) -> Self {
        Self::at(text, chars, dispatch, 0, Base)
    }

    /// `TParserCopyInit`: a fresh parser starting at character `start` of the same text.
    fn at(
        text: &'a [u8],
        chars: &'a [Ch],
        dispatch: Option<&'a Dispatch>,
        start: usize,
        state: St,
    ) -> Self {
        Parser {
            text,
            chars,
            end: chars.len() - 1,
            dispatch,
            cur: Pos::new(start, state),
            saved: Vec::new(),
            ignore: false,
            wanthost: false,
            token_start: start,
            token_bytes: 0,
            token_chars: 0,
            ty: 0,
        }
    }

    /// The next token (`prsd_nexttoken`), or `None` at the end (type 0 in C).
    pub(crate) fn next_token(&mut self) -> Option<Token> {
        if !self.get() {
            return None;
        }
        Some(Token {
            ty: self.ty,
            start: self.chars[self.token_start].off as usize,
            len: self.token_bytes,
        })
    }

    /// `TParserGet`, transcribed.
    fn get(&mut self) -> bool {
        if self.cur.pos >= self.end {
            return false;
        }
        self.token_start = self.cur.pos;
        self.cur.pushed_at = None;
        if self.dispatch.is_some() && self.cur.state == Base && !self.ignore && self.shortcut() {
            return true;
        }

        let last_flags = loop {
            let state = self.cur.state;
            let items = actions(state);
            let idx = match self.cur.pushed_at.take() {
                // After a POP, pick up at the test after the one that pushed.
                Some(i) => self.scan(items, i as usize + 1),
                None => match self.dispatch {
                    Some(d) => {
                        let ch = self.chars[self.cur.pos];
                        match d.get(state, ch, self.ignore, self.wanthost) {
                            DYNAMIC => self.scan(items, 0),
                            i => {
                                if items[i as usize].test == StopHost {
                                    // p_isstophost's side effect.
                                    self.wanthost = false;
                                }
                                i as usize
                            }
                        }
                    }
                    None => self.scan(items, 0),
                },
            };
            let item = items[idx];

            match item.special {
                Special::None => {}
                Special::Tags => self.special_tags(),
                Special::FUrl => {
                    self.wanthost = true;
                    self.cur.pos -= self.cur.len_chars;
                }
                Special::Hyphen => self.cur.pos -= self.cur.len_chars,
                Special::VerVersion => {
                    self.cur.pos -= self.cur.len_chars;
                    self.cur.len_bytes = 0;
                    self.cur.len_chars = 0;
                }
            }

            if item.flags & A_BINGO != 0 {
                self.token_bytes = self.cur.len_bytes;
                self.token_chars = self.cur.len_chars;
                self.cur.len_bytes = 0;
                self.cur.len_chars = 0;
                self.ty = item.ty;
            }

            if item.flags & A_POP != 0 {
                self.cur = self.saved.pop().expect("POP needs a pushed position");
            } else if item.flags & A_PUSH != 0 {
                let mut below = self.cur;
                below.pushed_at = Some(idx as u8);
                self.saved.push(below);
                self.cur.pushed_at = None;
            } else if item.flags & A_CLEAR != 0 {
                self.saved.pop().expect("CLEAR needs a pushed position");
            } else if item.flags & A_CLRALL != 0 {
                self.saved.clear();
            } else if item.flags & A_MERGE != 0 {
                let ptr = self.cur;
                self.cur = self.saved.pop().expect("MERGE needs a pushed position");
                self.cur.pos = ptr.pos;
                self.cur.len_bytes = ptr.len_bytes;
                self.cur.len_chars = ptr.len_chars;
            }

            if item.to != Null {
                self.cur.state = item.to;
            }

            let pos = self.cur.pos;
            if item.flags & A_BINGO != 0 || (pos >= self.end && item.flags & A_RERUN == 0) {
                break item.flags;
            }
            if item.flags & (A_RERUN | A_POP) != 0 {
                continue;
            }
            // Move forward one character (C: only if charlen, i.e. not at the end).
            let len = self.chars[pos].len as usize;
            if len != 0 {
                self.cur.pos += 1;
                self.cur.len_bytes += len;
                self.cur.len_chars += 1;
            }
        };
        last_flags & A_BINGO != 0
    }

    /// The commonest tokens from `Base` in one tight loop: a plain word (ASCII or not), an
    /// unsigned integer, a blank. Each path follows the tables exactly and gives up
    /// (returning false, having changed nothing) wherever the tables would push, test a
    /// nested parse or change state in any other way than the straight run to BINGO.
    fn shortcut(&mut self) -> bool {
        const ALNUM: u8 = class::ALPHA | class::DIGIT;
        let chars = self.chars;
        let start = self.cur.pos;
        let first = chars[start];
        let mut i = start;
        // Base -> InWord, then alpha or special letters; BINGO word before anything
        // but a digit (InNumWord) or '-' (hyphenated word).
        let in_word = |mut i: usize| -> Option<usize> {
            while chars[i].class & (class::ALPHA | class::SPECIAL) != 0 {
                i += 1;
            }
            let x = chars[i];
            if x.len != 0 && (x.class & class::DIGIT != 0 || (x.len == 1 && x.byte == b'-')) {
                None
            } else {
                Some(i)
            }
        };
        let ty = if first.len == 1 && first.class & class::ALPHA != 0 {
            // Base -> InAsciiWord: ASCII letters.
            while chars[i].len == 1 && chars[i].class & class::ALPHA != 0 {
                i += 1;
            }
            let x = chars[i];
            if x.len == 0 {
                ASCIIWORD
            } else if x.class & class::DIGIT != 0 {
                return false;
            } else if x.len == 1 {
                if x.byte == b'.' {
                    // '.' tries a host (InHostFirstDomain: ASCII letter or digit next) and
                    // a file name (InFileNext: ASCII letter, digit or '_'); both pop back
                    // on anything else and the word ends before the '.'.
                    let y = chars[i + 1];
                    if y.class & class::DIGIT != 0
                        || (y.len == 1 && (y.class & class::ALPHA != 0 || y.byte == b'_'))
                    {
                        return false;
                    }
                } else if matches!(x.byte, b'-' | b'_' | b'@' | b':' | b'/') {
                    return false;
                }
                ASCIIWORD
            } else if x.class & (class::ALPHA | class::SPECIAL) != 0 {
                // InAsciiWord -> InWord: the same token goes on.
                match in_word(i) {
                    Some(end) => {
                        i = end;
                        WORD
                    }
                    None => return false,
                }
            } else {
                ASCIIWORD
            }
        } else if first.len > 1 && first.class & class::ALPHA != 0 {
            match in_word(i) {
                Some(end) => {
                    i = end;
                    WORD
                }
                None => return false,
            }
        } else if first.class & class::DIGIT != 0 {
            // Base -> InUnsignedInt: digits; BINGO before anything that could make a
            // decimal, a host, an e-mail, a file or a numword.
            while chars[i].class & class::DIGIT != 0 {
                i += 1;
            }
            let x = chars[i];
            if x.len == 1 {
                if x.byte == b'.' {
                    // '.' tries a host (ASCII letter or digit next) and a decimal (digit
                    // next); both pop back on anything else: the integer ends.
                    let y = chars[i + 1];
                    if y.class & class::DIGIT != 0 || (y.len == 1 && y.class & class::ALPHA != 0) {
                        return false;
                    }
                } else if x.class & class::ALPHA != 0 || matches!(x.byte, b'-' | b'_' | b'@' | b'/')
                {
                    return false;
                }
            } else if x.len > 1 && x.class & (class::ALPHA | class::SPECIAL) != 0 {
                return false;
            }
            UNSIGNEDINT
        } else if first.len > 1 || self.base_trigger_fails(first.byte, chars[start + 1]) {
            // Base -> InSpace (first is neither alphanumeric nor a Base trigger), then
            // anything not alphanumeric up to a '<', '-', '+', '&' or '/'.
            i += 1;
            loop {
                let x = chars[i];
                if x.len == 0
                    || x.class & ALNUM != 0
                    || (x.len == 1 && matches!(x.byte, b'<' | b'-' | b'+' | b'&' | b'/'))
                {
                    break;
                }
                i += 1;
            }
            SPACE
        } else {
            return false;
        };
        self.token_bytes = (chars[i].off - chars[start].off) as usize;
        self.token_chars = i - start;
        self.ty = ty;
        self.cur.pos = i;
        self.cur.len_bytes = 0;
        self.cur.len_chars = 0;
        true
    }

    /// For a non-alphanumeric ASCII `first` at `Base`: true when Base goes straight on to
    /// InSpace, i.e. `first` pushes nothing, or the state it pushes pops back at once
    /// because of the character after it, `next`.
    #[inline]
    fn base_trigger_fails(&self, first: u8, next: Ch) -> bool {
        let letter = next.len == 1 && next.class & class::ALPHA != 0;
        let digit = next.class & class::DIGIT != 0;
        let byte = if next.len == 1 { next.byte } else { 0 };
        match first {
            // InSignedIntFirst wants a digit.
            b'-' | b'+' => !digit,
            // InXMLEntityFirst: '#', an ASCII letter, ':' or '_'.
            b'&' => !(letter || matches!(byte, b'#' | b':' | b'_')),
            // InFileTwiddle: an ASCII letter, digit, '_' or '/'.
            b'~' => !(letter || digit || matches!(byte, b'_' | b'/')),
            // InFileFirst: an ASCII letter, digit, '.', '_' or '~'.
            b'/' => !(letter || digit || matches!(byte, b'.' | b'_' | b'~')),
            // InPathFirstFirst: '.' or '/'.
            b'.' => !matches!(byte, b'.' | b'/'),
            // InTagFirst: '/', '!', '?', an ASCII letter, ':' or '_'.
            b'<' => !(letter || matches!(byte, b'/' | b'!' | b'?' | b':' | b'_')),
            _ => true,
        }
    }

    /// Tries the actions from `from` on, in order: the index of the first that passes.
    fn scan(&mut self, items: &[Item], from: usize) -> usize {
        let mut idx = from;
        while !self.test(items[idx].test) {
            idx += 1;
        }
        idx
    }

    /// The character-class test of an action, at the current position.
    fn test(&mut self, test: Test) -> bool {
        let pos = self.cur.pos;
        let ch = self.chars[pos];
        let c = ch.class;
        match test {
            Any => true,
            Eof => pos == self.end,
            Eq(b) => ch.len == 1 && ch.byte == b,
            Ignore => self.ignore,
            AscLet => ch.len == 1 && c & class::ALPHA != 0,
            Alpha => c & class::ALPHA != 0,
            Digit => c & class::DIGIT != 0,
            Alnum => c & (class::ALPHA | class::DIGIT) != 0,
            NotAlnum => c & (class::ALPHA | class::DIGIT) == 0,
            // Every state that tests `p_isspecial` tests end-of-text first, so C never
            // asks pg_dsplen about the byte past the end.
            Special => c & class::SPECIAL != 0,
            Space => c & class::SPACE != 0,
            XDigit => c & class::XDIGIT != 0,
            StopHost => {
                if self.wanthost {
                    self.wanthost = false;
                    true
                } else {
                    false
                }
            }
            Host => self.sub_parse(Base, true, HOST),
            UrlPath => self.sub_parse(InURLPathFirst, false, URLPATH),
            UrlChar => ch.len == 1 && is_url_char(ch.byte),
        }
    }

    /// `p_ishost` / `p_isURLPath`: run a nested parser from here; if its first token has
    /// the wanted type, swallow it into the current token.
    fn sub_parse(&mut self, state: St, wanthost: bool, want: u8) -> bool {
        let pos = self.cur.pos;
        let mut sub = Parser::at(self.text, self.chars, self.dispatch, pos, Base);
        if state != Base {
            // p_isURLPath pushes a second position whose state is InURLPathFirst.
            sub.saved.push(sub.cur);
            sub.cur = Pos::new(pos, state);
        }
        sub.wanthost = wanthost;
        if sub.get() && sub.ty == want {
            let (bytes, chars) = (sub.token_bytes, sub.token_chars);
            self.cur.pos += chars;
            self.cur.len_bytes += bytes;
            self.cur.len_chars += chars;
            true
        } else {
            false
        }
    }

    /// `SpecialTags`: `<script` and `<style` start ignoring text, their closing tags end it.
    fn special_tags(&mut self) {
        let n = self.cur.len_chars;
        let off = self.chars[self.token_start].off as usize;
        // pg_strncasecmp over n bytes of the token: ASCII case folding only (a byte of a
        // multibyte character never equals one of these ASCII letters).
        let head = |pat: &str| {
            self.text
                .get(off..off + pat.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(pat.as_bytes()))
        };
        match n {
            8 if head("</script") => self.ignore = false,
            7 if head("</style") => self.ignore = false,
            7 if head("<script") => self.ignore = true,
            6 if head("<style") => self.ignore = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ASCII-only classes, as under any locale.
    fn chars_of(text: &str) -> Vec<Ch> {
        let mut v: Vec<Ch> = text
            .char_indices()
            .map(|(off, c)| {
                let len = c.len_utf8() as u8;
                let byte = if len == 1 { c as u8 } else { 0 };
                let mut class = 0;
                if c.is_ascii_alphabetic() || (!c.is_ascii() && c.is_alphabetic()) {
                    class |= class::ALPHA;
                }
                if c.is_ascii_digit() {
                    class |= class::DIGIT;
                }
                if c == '\u{301}' {
                    // A combining mark: zero display width, joins words.
                    class |= class::SPECIAL;
                }
                if c.is_ascii_hexdigit() {
                    class |= class::XDIGIT;
                }
                if matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c') {
                    class |= class::SPACE;
                }
                Ch {
                    off: off as u32,
                    len,
                    byte,
                    class,
                }
            })
            .collect();
        v.push(Ch {
            off: text.len() as u32,
            len: 0,
            byte: 0,
            class: 0,
        });
        v
    }

    fn ascii_classes() -> [u8; 128] {
        let mut a = [0u8; 128];
        let chars = chars_of(&(1..128u8).map(|b| b as char).collect::<String>());
        for ch in &chars[..127] {
            a[ch.byte as usize] = ch.class;
        }
        a
    }

    fn run(text: &str, dispatch: Option<&Dispatch>) -> Vec<(&'static str, String)> {
        let chars = chars_of(text);
        let mut p = Parser::new(text.as_bytes(), &chars, dispatch);
        let mut out = Vec::new();
        while let Some(t) = p.next_token() {
            out.push((
                tok::ALIASES[t.ty as usize],
                text[t.start..t.start + t.len].to_string(),
            ));
        }
        out
    }

    fn dispatch() -> &'static Dispatch {
        static D: std::sync::OnceLock<Dispatch> = std::sync::OnceLock::new();
        D.get_or_init(|| Dispatch::new(&ascii_classes()))
    }

    /// Tokens with the dispatch table, checked against the action-by-action path.
    fn tokens(text: &str) -> Vec<(&'static str, String)> {
        let fast = run(text, Some(dispatch()));
        assert_eq!(
            fast,
            run(text, None),
            "dispatch table and linear scan differ on {text:?}"
        );
        fast
    }

    #[test]
    fn dispatch_table_agrees_with_trying_actions_in_order() {
        const PIECES: &[&str] = &[
            "a", "Z", "foo", "x", "e", "E", "D", "script", "style", "http", "www", "com", "0", "1",
            "42", "-", "--", "+", ".", "..", "/", "//", "~", "_", "@", ":", "<", "</", "<!",
            "<!--", "-->", "<?", ">", "/>", "&", "&#", "&#x", ";", "#", "=", "'", "\"", "\\", "?",
            "%", "!", " ", "\t", "é", "Ж", "北", "\u{301}", "7", "99", "E5",
        ];
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..20_000 {
            let k = 1 + next(30);
            let text: String = (0..k).map(|_| PIECES[next(PIECES.len())]).collect();
            tokens(&text);
        }
    }

    fn t(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(a, b)| (*a, b.to_string())).collect()
    }

    // Expected token streams copied from PostgreSQL 15's `ts_parse('default', ...)`.

    #[test]
    fn words_and_blanks() {
        assert_eq!(
            tokens("Hello, world"),
            t(&[
                ("asciiword", "Hello"),
                ("blank", ", "),
                ("asciiword", "world")
            ])
        );
    }

    #[test]
    fn hyphenated_word_then_its_parts() {
        assert_eq!(
            tokens("foo-bar"),
            t(&[
                ("asciihword", "foo-bar"),
                ("hword_asciipart", "foo"),
                ("blank", "-"),
                ("hword_asciipart", "bar"),
            ])
        );
    }

    #[test]
    fn email_host_url_and_version() {
        assert_eq!(
            tokens("a.b@example.com"),
            t(&[("email", "a.b@example.com")])
        );
        assert_eq!(
            tokens("http://www.example.com/x?y=1"),
            t(&[
                ("protocol", "http://"),
                ("url", "www.example.com/x?y=1"),
                ("host", "www.example.com"),
                ("url_path", "/x?y=1"),
            ])
        );
        assert_eq!(tokens("1.2.3"), t(&[("version", "1.2.3")]));
        assert_eq!(tokens("-1.5e10"), t(&[("sfloat", "-1.5e10")]));
    }

    #[test]
    fn script_content_is_blank() {
        assert_eq!(
            tokens("<script>x y</script>z"),
            t(&[
                ("tag", "<script>"),
                ("blank", "x y"),
                ("tag", "</script>"),
                ("asciiword", "z"),
            ])
        );
    }
}
