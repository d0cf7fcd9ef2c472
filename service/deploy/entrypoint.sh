#!/bin/sh
# Container entry point: `adafocus "$@"` (default `adafocus serve`).
# The operator token for PUT /budget never lives in the image: pass ADAFOCUS_OPERATOR_TOKEN from an env file, or
# point ADAFOCUS_OPERATOR_TOKEN_FILE at a mounted secret (docker-compose.yml mounts /run/secrets/operator_token).
set -eu
if [ -n "${ADAFOCUS_OPERATOR_TOKEN_FILE:-}" ]; then
    if [ ! -r "$ADAFOCUS_OPERATOR_TOKEN_FILE" ]; then
        echo "adafocus-entrypoint: ADAFOCUS_OPERATOR_TOKEN_FILE=$ADAFOCUS_OPERATOR_TOKEN_FILE is not readable" >&2
        exit 64
    fi
    ADAFOCUS_OPERATOR_TOKEN="$(tr -d '\r\n' < "$ADAFOCUS_OPERATOR_TOKEN_FILE")"
    export ADAFOCUS_OPERATOR_TOKEN
    unset ADAFOCUS_OPERATOR_TOKEN_FILE
fi
exec adafocus "$@"
