//! SQL for PostgreSQL's text search catalog and functions, as the search-vector probe
//! (`tsvector::probe`) asks them: the server's settings, `civicload_page_vector`'s
//! definition, the `simple` configuration, its parser and dictionaries, and the per-code-point
//! probes (`ts_lexize`, `unaccent`, `ts_parse`). Each function is one statement returning
//! plain rows; what they mean is the probe's business.

use sqlx::{PgPool, Row};

use super::sql::{self, autocommit};

/// A statement of the probe failed; `step` says which, in words.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct TextSearchError {
    /// What was being read, e.g. "reading the server version".
    pub step: &'static str,
    #[source]
    pub source: sqlx::Error,
}

fn failed(step: &'static str) -> impl FnOnce(sqlx::Error) -> TextSearchError {
    move |source| TextSearchError { step, source }
}

/// The server's version, encoding and locale.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// `server_version_num`, e.g. 150018.
    pub version_num: i32,
    /// `server_version`, e.g. "15.18 (Debian ...)".
    pub version: String,
    /// `server_encoding`.
    pub encoding: String,
    /// `lc_ctype`.
    pub lc_ctype: String,
}

/// Reads [`ServerSettings`].
pub async fn server_settings(pool: &PgPool) -> Result<ServerSettings, TextSearchError> {
    let row = sql::query(
        "SELECT current_setting('server_version_num')::int,
                current_setting('server_version'),
                current_setting('server_encoding'),
                current_setting('lc_ctype')",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(failed("reading the server version"))?;
    Ok(ServerSettings {
        version_num: row.get(0),
        version: row.get(1),
        encoding: row.get(2),
        lc_ctype: row.get(3),
    })
}

/// `pg_get_functiondef` of the visible `civicload_page_vector(text)`, if there is one.
pub async fn page_vector_definition(pool: &PgPool) -> Result<Option<String>, TextSearchError> {
    sql::query_scalar(
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p
         WHERE p.proname = 'civicload_page_vector' AND p.pronargs = 1
           AND p.proargtypes[0] = 'text'::regtype AND pg_function_is_visible(p.oid)",
    )
    .fetch_optional(autocommit(pool))
    .await
    .map_err(failed("reading civicload_page_vector"))
}

/// The `simple` configuration and its parser.
#[derive(Clone, Debug)]
pub struct SimpleConfiguration {
    /// The configuration's oid.
    pub config: i64,
    /// Its parser's oid.
    pub parser: i64,
    /// The parser's start, next-token and end functions (`prsstart`, `prstoken`, `prsend`).
    pub functions: (String, String, String),
}

/// Reads [`SimpleConfiguration`].
pub async fn simple_configuration(pool: &PgPool) -> Result<SimpleConfiguration, TextSearchError> {
    let row = sql::query(
        "SELECT c.oid::bigint, p.oid::bigint, p.prsstart::text, p.prstoken::text, p.prsend::text
         FROM pg_ts_config c JOIN pg_ts_parser p ON p.oid = c.cfgparser
         WHERE c.oid = 'simple'::regconfig",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(failed("reading the simple configuration"))?;
    Ok(SimpleConfiguration {
        config: row.get(0),
        parser: row.get(1),
        functions: (row.get(2), row.get(3), row.get(4)),
    })
}

/// The parser's token types: (id, alias), as `ts_token_type` lists them.
pub async fn token_types(
    pool: &PgPool,
    parser: i64,
) -> Result<Vec<(i32, String)>, TextSearchError> {
    sql::query_as("SELECT tokid, alias FROM ts_token_type($1::oid)")
        .bind(parser)
        .fetch_all(autocommit(pool))
        .await
        .map_err(failed("reading the parser's token types"))
}

/// One row of a configuration's mapping: a token type goes to a dictionary.
#[derive(Clone, Debug)]
pub struct MappingRow {
    /// `maptokentype`.
    pub token_type: i32,
    /// The dictionary's oid.
    pub dict: i64,
    /// The dictionary template's lexize function.
    pub lexize: String,
    /// The dictionary's `dictinitoption`.
    pub options: Option<String>,
}

/// The mapping of configuration `config`, by token type then sequence number.
pub async fn configuration_mapping(
    pool: &PgPool,
    config: i64,
) -> Result<Vec<MappingRow>, TextSearchError> {
    let rows: Vec<(i32, i32, i64, String, Option<String>)> = sql::query_as(
        "SELECT m.maptokentype, m.mapseqno, d.oid::bigint, t.tmpllexize::text, d.dictinitoption
         FROM pg_ts_config_map m
         JOIN pg_ts_dict d ON d.oid = m.mapdict
         JOIN pg_ts_template t ON t.oid = d.dicttemplate
         WHERE m.mapcfg = $1::oid ORDER BY 1, 2",
    )
    .bind(config)
    .fetch_all(autocommit(pool))
    .await
    .map_err(failed("reading the simple configuration's mapping"))?;
    Ok(rows
        .into_iter()
        .map(|(token_type, _, dict, lexize, options)| MappingRow {
            token_type,
            dict,
            lexize,
            options,
        })
        .collect())
}

/// The `public.unaccent` dictionary's lexize function and `dictinitoption`.
pub async fn unaccent_dictionary(
    pool: &PgPool,
) -> Result<(String, Option<String>), TextSearchError> {
    let row = sql::query(
        "SELECT t.tmpllexize::text, d.dictinitoption FROM pg_ts_dict d
         JOIN pg_ts_template t ON t.oid = d.dicttemplate
         WHERE d.oid = 'public.unaccent'::regdictionary",
    )
    .fetch_one(autocommit(pool))
    .await
    .map_err(failed("reading the unaccent dictionary"))?;
    Ok((row.get(0), row.get(1)))
}

/// The first lexeme of `ts_lexize(dict, text)`: `None` when the dictionary rejects it.
pub async fn lexize_first(
    pool: &PgPool,
    dict: i64,
    text: &str,
) -> Result<Option<String>, TextSearchError> {
    sql::query_scalar::<Option<String>>("SELECT (ts_lexize($1::oid::regdictionary, $2))[1]")
        .bind(dict)
        .bind(text)
        .fetch_one(autocommit(pool))
        .await
        .map_err(failed("lowercasing every code point with ts_lexize"))
}

/// `unaccent(text)` and `unaccent(chr(1))`, with the `public.unaccent` dictionary.
pub async fn unaccent_with_separator(
    pool: &PgPool,
    text: &str,
) -> Result<(String, String), TextSearchError> {
    sql::query_as::<(String, String)>(
        "SELECT public.unaccent('public.unaccent'::regdictionary, $1),
                public.unaccent('public.unaccent'::regdictionary, chr(1))",
    )
    .bind(text)
    .fetch_one(autocommit(pool))
    .await
    .map_err(failed("running unaccent over every code point"))
}

/// The non-blank tokens of `ts_parse(parser, text)` but those of the `ignored` types,
/// grouped by type, joined by U+0001 (a control character: it ends every token type, so it
/// never occurs inside one).
pub async fn parse_tokens(
    pool: &PgPool,
    parser: i64,
    text: &str,
    ignored: &[i32],
) -> Result<Vec<(i32, String)>, TextSearchError> {
    sql::query_as(
        "SELECT tokid, string_agg(token, chr(1)) FROM ts_parse($1::oid, $2)
         WHERE tokid <> 12 AND tokid <> ALL($3) GROUP BY tokid",
    )
    .bind(parser)
    .bind(text)
    .bind(ignored)
    .fetch_all(autocommit(pool))
    .await
    .map_err(failed("classifying every code point with ts_parse"))
}

/// The content of the server's `tsearch_data/<name>.rules`. Reading it needs superuser or
/// pg_read_server_files: the caller decides what a refusal (SQLSTATE 42501) means.
pub async fn read_rules_file(pool: &PgPool, name: &str) -> Result<Option<String>, TextSearchError> {
    sql::query_scalar(
        "SELECT pg_read_file(setting || '/tsearch_data/' || $1 || '.rules')
         FROM pg_config WHERE name = 'SHAREDIR'",
    )
    .bind(name)
    .fetch_optional(autocommit(pool))
    .await
    .map_err(failed("reading the unaccent rules file"))
}

/// `civicload_page_vector(t)::text` for each of `texts`, in order.
pub async fn page_vectors(pool: &PgPool, texts: &[String]) -> Result<Vec<String>, TextSearchError> {
    sql::query_scalar(
        "SELECT civicload_page_vector(t)::text FROM unnest($1::text[]) WITH ORDINALITY AS x(t, n) ORDER BY n",
    )
    .bind(texts)
    .fetch_all(autocommit(pool))
    .await
    .map_err(failed("comparing vectors on the built-in sample"))
}
