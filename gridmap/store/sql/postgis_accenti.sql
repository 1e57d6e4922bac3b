-- CQL2 ACCENTI: canonical decomposition, nonspacing marks (Unicode category Mn) removed,
-- recomposed. {marks} is the bracket expression of every Mn character, written from the
-- Unicode tables of the Python that creates the schema (so both backends agree).
CREATE OR REPLACE FUNCTION gm_accenti(text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $fn$ SELECT normalize(regexp_replace(normalize($1, NFD), '{marks}', '', 'g'), NFC) $fn$;
