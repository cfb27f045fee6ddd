#!/usr/bin/env bash
# Writes the seed corpora into fuzz/corpus/<target>/ (git-ignored): the
# vectors of the parsers' unit tests, in each target's input format. Front-end
# inputs start with an option byte (bit 0: offer STARTTLS; bits 1-7: how the
# bytes are split into reads, 0 = one read). Run by run.sh before fuzzing.
set -euo pipefail
cd "$(dirname "$0")"

seed() { # target name bytes (printf format)
    mkdir -p "corpus/$1"
    # shellcheck disable=SC2059
    printf "$3" >"corpus/$1/seed-$2"
}
# Front-end seed: the same session with one read and split into small reads,
# without and with STARTTLS on offer.
session() { # target name bytes
    seed "$1" "$2-whole" "\x00$3"
    seed "$1" "$2-split" "\x0b$3"
    seed "$1" "$2-tls" "\x01$3"
}

# IMAP: LOGIN forms (atoms, quoted strings, literals, LITERAL+), AUTHENTICATE
# PLAIN/LOGIN with and without SASL-IR, STARTTLS, ID, oversized literals.
session imap_frontend login-atoms 'A1 LOGIN alice secret\r\n'
session imap_frontend login-quoted 'A1 LOGIN "alice@contoso.com" "pa ss\\"wo\\\\rd"\r\n'
session imap_frontend login-literals 'A1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n'
session imap_frontend login-literal-plus 'A1 LOGIN {5+}\r\nalice {7+}\r\nse cret\r\nA2 NOOP\r\n'
session imap_frontend login-literal-crlf 'A1 LOGIN alice {8}\r\na"b\r\nc d\r\n'
session imap_frontend login-utf8 'A1 LOGIN "j\xc3\xb6rg@contoso.com" "p\xc3\xa4ssw\xc3\xb6rd"\r\n'
session imap_frontend auth-plain-ir 'a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n'
session imap_frontend auth-plain 'a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n'
session imap_frontend auth-login 'a AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n'
session imap_frontend auth-cancel 'a AUTHENTICATE LOGIN\r\n*\r\nb LOGOUT\r\n'
session imap_frontend simple 'a CAPABILITY\r\nb NOOP\r\nc ID ("name" "Thunderbird" "version" NIL)\r\nd ID NIL\r\ne STARTTLS\r\nf LOGOUT\r\n'
session imap_frontend refusals 'a SELECT INBOX\r\n* LOGIN a b\r\nb LOGIN {99999}\r\nc LOGIN ~{5}\r\nd CAPABILITY {3}\r\n\r\n'
session imap_frontend literal-too-big 'a LOGIN {9000+}\r\nxx'

# POP3: USER/PASS, AUTH PLAIN/LOGIN with and without initial responses, CAPA,
# STLS, APOP, transaction commands before login.
session pop3_frontend user-pass 'CAPA\r\nUSER alice@contoso.com\r\nPASS pass word\r\n'
session pop3_frontend auth-plain-ir 'AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n'
session pop3_frontend auth-plain 'AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n'
session pop3_frontend auth-login 'AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n'
session pop3_frontend auth-list 'AUTH\r\nAUTH XOAUTH2\r\nAUTH LOGIN\r\n*\r\n'
session pop3_frontend misc 'STLS\r\nAPOP alice 0123456789abcdef\r\nSTAT\r\nNOOP\r\nQUIT\r\n'

# SMTP: EHLO/HELO, AUTH forms, STARTTLS, transaction commands and BDAT before
# login, a fixed-account relay's MAIL FROM.
session smtp_frontend auth-plain-ir 'EHLO client.example\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@contoso.com>\r\n'
session smtp_frontend auth-plain 'EHLO client\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n'
session smtp_frontend auth-login 'HELO client\r\nAUTH LOGIN YWxpY2U=\r\nc2VjcmV0\r\n'
session smtp_frontend auth-cancel 'EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN =\r\n'
session smtp_frontend misc 'EHLO c\r\nSTARTTLS\r\nEHLO c\r\nNOOP\r\nRSET\r\nVRFY x\r\nQUIT\r\n'
session smtp_frontend bdat 'EHLO c\r\nBDAT 5 LAST\r\nhelloRCPT TO:<bob@example.com>\r\nDATA\r\n'
session smtp_frontend mail-from 'MAIL FROM:<@a,@b:scanner@contoso.com> SIZE=100\r\nRCPT TO:<x@y>\r\n'

# The fixed-account relay's filter after its first MAIL FROM: transactions,
# RSET and other senders, smuggling with bare LF and CR, BDAT, the caps.
session smtp_relay_filter transaction 'MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@x>\r\nDATA\r\nhi\r\n..dot\r\n.\r\nQUIT\r\n'
session smtp_relay_filter rset-other 'MAIL FROM:<scanner@contoso.com>\r\nRSET\r\nMAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<a@x>\r\nDATA\r\n'
session smtp_relay_filter smuggle 'MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@x>\r\nDATA\r\nx\n.\nMAIL FROM:<ceo@contoso.com>\r.\rRCPT TO:<b@x>\r\n.\r\n'
session smtp_relay_filter caps 'MAIL FROM:<@a:scanner@contoso.com>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nRCPT TO:<d@x>\r\nBDAT 3 LAST\r\nabcEHLO x\r\nAUTH PLAIN x\r\n'

# SASL responses.
seed sasl_decode plain 'AGFsaWNlAHNlY3JldA=='
seed sasl_decode plain-authzid 'Ym9iAGFsaWNlAHNlY3JldA=='
seed sasl_decode login-user 'YWxpY2VAY29udG9zby5jb20='
seed sasl_decode empty '='
seed sasl_decode challenge 'eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0='

# Capability lists and greetings (option byte: bit 0 STARTTLS, bit 1 EHLO).
seed capability_rewrite imap-greeting '\x01* OK The Microsoft Exchange IMAP4 service is ready.\nIMAP4rev1\nAUTH=XOAUTH2\nLOGINDISABLED\nSTARTTLS'
seed capability_rewrite imap-code '\x00* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2 ID] Dovecot ready.'
seed capability_rewrite imap-caps '\x03* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+'
seed capability_rewrite pop3-capa '\x01TOP\nUIDL\nSASL PLAIN XOAUTH2\nUSER\nSTLS\nX-OAUTH=XOAUTH2\n.'
seed capability_rewrite pop3-apop '\x00+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>'
seed capability_rewrite ehlo '\x03outlook.office365.com Hello [203.0.113.1]\nSIZE 157286400\nPIPELINING\nAUTH LOGIN XOAUTH2\nAUTH=LOGIN\nX-EXPS GSSAPI NTLM\nSTARTTLS\n8BITMIME'

# Inputs at and over the caps (8 KiB IMAP and POP3 lines and IMAP literals,
# 12 KiB SMTP lines), so the fuzzer starts from the limits, not below them.
run() { head -c "$1" /dev/zero | tr '\0' "$2"; }
long() { # target name prefix bytes-of-filler filler suffix
    mkdir -p "corpus/$1"
    # shellcheck disable=SC2059
    { printf "\x00$3"; run "$4" "$5"; printf "$6"; } >"corpus/$1/seed-$2"
}
long imap_frontend line-at-cap 'a1 LOGIN alice ' 8174 x '\r\n'
long imap_frontend line-over-cap 'a1 ' 8200 a ''
long imap_frontend literal-at-cap 'a1 LOGIN alice {8192+}\r\n' 8192 p '\r\n'
long imap_frontend literals-over-total 'a1 ID ("a" {8192+}\r\n' 8192 v ' "b" {8192+}\r\n'
long pop3_frontend line-at-cap 'PASS ' 8187 p '\r\n'
long pop3_frontend line-over-cap 'USER ' 8200 u ''
long smtp_frontend line-at-cap 'AUTH PLAIN ' 12277 A '\r\n'
long smtp_frontend line-over-cap 'EHLO ' 12300 h ''

# Upstream lines and replies.
seed upstream_replies imap '* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n+ eyJzdGF0dXMiOiI0MDEifQ==\r\nA1 NO AUTHENTICATE failed.\r\nA2 OK [CAPABILITY IMAP4rev1] done\r\n* BYE Request is throttled\r\n'
seed upstream_replies pop3 '+OK ready\r\n+ \r\n-ERR [AUTH] Authentication failure\r\n+OKAY\r\n-ERR\r\n'
seed upstream_replies smtp '220 mail.example ESMTP\r\n250-mail.example Hello\r\n250-AUTH LOGIN XOAUTH2\r\n250 STARTTLS\r\n432 4.3.2 Concurrent connections limit exceeded\r\n535 5.7.3 Authentication unsuccessful\r\n'
seed upstream_replies smtp-mixed '250-a\r\n251 b\r\n'
