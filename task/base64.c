/* Standard base64 with padding (RFC 4648 section 4), as Go's encoding/json
 * writes []byte and as machinery decodes "[]byte" and "[]uint8" values
 * (base64.StdEncoding.DecodeString). */
#include "task/task.h"

#include <string.h>

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *kiln__base64_encode(const uint8_t *data, size_t n)
{
    size_t out_len, k = 0, i = 0;
    char *out;

    if (n > (SIZE_MAX - 1) / 4 * 3 - 3)
        return NULL;
    out_len = (n + 2) / 3 * 4;
    if ((out = kiln__malloc(out_len + 1)) == NULL)
        return NULL;
    for (; i + 2 < n; i += 3) {
        uint32_t v =
            (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        out[k++] = alphabet[v >> 18];
        out[k++] = alphabet[v >> 12 & 63];
        out[k++] = alphabet[v >> 6 & 63];
        out[k++] = alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)data[i + 1] << 8;
        out[k++] = alphabet[v >> 18];
        out[k++] = alphabet[v >> 12 & 63];
        out[k++] = '=';
        if (i + 1 < n)
            out[k - 1] = alphabet[v >> 6 & 63];
        out[k++] = '=';
    }
    out[k] = '\0';
    return out;
}

static int sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Go's decoder skips \r and \n anywhere, requires the padding, and does
 * not insist that the unused bits of the last group are zero. */
kiln_err kiln__base64_decode(const char *s, size_t len, uint8_t **out,
                             size_t *n, kiln_error *err)
{
    uint8_t *buf;
    uint32_t acc = 0;
    size_t k = 0, got = 0, pad = 0, i;

    *out = NULL;
    *n = 0;
    if ((buf = kiln__malloc(len / 4 * 3 + 3)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "decoding %zu base64 bytes", len);
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int v = sextet(c);

        if (c == '\r' || c == '\n')
            continue;
        if (c == '=' && got % 4 >= 2 && pad < 2 - (got % 4 == 3)) {
            pad++;
            continue;
        }
        if (v < 0 || pad > 0)
            break;
        acc = acc << 6 | (uint32_t)v;
        if (++got % 4 == 0) {
            buf[k++] = (uint8_t)(acc >> 16);
            buf[k++] = (uint8_t)(acc >> 8);
            buf[k++] = (uint8_t)acc;
            acc = 0;
        }
    }
    if (i < len || (got + pad) % 4 != 0 || (pad > 0 && got % 4 + pad != 4)) {
        kiln__free(buf);
        return kiln__fail(err, KILN_ECODEC,
                          "illegal base64 data at input "
                          "byte %zu",
                          i < len ? i : len);
    }
    if (got % 4 == 2) {
        buf[k++] = (uint8_t)(acc >> 4);
    } else if (got % 4 == 3) {
        buf[k++] = (uint8_t)(acc >> 10);
        buf[k++] = (uint8_t)(acc >> 2);
    }
    *out = buf;
    *n = k;
    return KILN_OK;
}
