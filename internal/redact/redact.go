// Package redact hides the passwords in database URLs, DSNs and command
// lines before anything shows them: help texts, outputs, reports, errors.
// It is the one place that knows what a password looks like in each form.
package redact

import (
	"net/url"
	"regexp"
	"sort"
	"strings"
)

// Mask replaces a password.
const Mask = "xxxxx"

// Withheld replaces a string that looks like it holds a secret but cannot
// be taken apart safely.
const Withheld = "(withheld)"

// URL returns a database URL or DSN with its password replaced by Mask:
// the user info of scheme://user:password@host/db (the password may hold
// @ : / # ?), a go-sql-driver DSN user:password@tcp(host)/db, a
// password or passwd query parameter, and a keyword/value string's
// password=... What it cannot take apart but may hold a password it
// withholds whole.
func URL(s string) string {
	if s == "" {
		return s
	}
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		if !isScheme(scheme) {
			return conservative(s)
		}
		return scheme + "://" + query(userInfo(rest))
	}
	if keywordForm.MatchString(s) {
		return kvPassword.ReplaceAllString(s, "${1}"+Mask)
	}
	if scheme, rest, ok := strings.Cut(s, ":"); ok && !strings.Contains(s, "@") && isScheme(scheme) && strings.Contains(rest, ":") {
		// scheme:user:password (a URL missing its //), which a URL
		// parser reads as opaque: no host to show, maybe a password.
		return Withheld
	}
	return query(userInfo(s))
}

// userInfo masks the password of user:password@rest. The user info ends
// at the last @: a password may contain @ and / (unencoded), and a host
// never contains @, so anything before the last one is credentials (an @
// in a query parameter makes it hide more than it must, never less).
func userInfo(s string) string {
	at := strings.LastIndex(s, "@")
	if at < 0 {
		return s
	}
	user, _, hasPass := strings.Cut(s[:at], ":")
	switch {
	case strings.ContainsAny(user, "/?#"):
		// Not a plain user name: part of a password, or a path.
		return Mask + s[at:]
	case hasPass:
		return user + ":" + Mask + s[at:]
	}
	return s
}

// query masks password and passwd parameters after the first ?.
func query(s string) string {
	base, q, ok := strings.Cut(s, "?")
	if !ok {
		return s
	}
	q, frag, hasFrag := strings.Cut(q, "#")
	params := strings.Split(q, "&")
	for i, p := range params {
		k, _, _ := strings.Cut(p, "=")
		if isPasswordKey(k) {
			params[i] = k + "=" + Mask
		}
	}
	out := base + "?" + strings.Join(params, "&")
	if hasFrag {
		out += "#" + frag
	}
	return out
}

func isPasswordKey(k string) bool {
	k = strings.ToLower(k)
	return k == "password" || k == "passwd" || k == "pass" || k == "pwd"
}

// keywordForm recognises a keyword/value connection string: it starts with
// KEY=.
var keywordForm = regexp.MustCompile(`^\s*\w+\s*=`)

// kvPassword finds password=VALUE in a keyword/value connection string
// (PostgreSQL's "host=h password=p"), VALUE bare or single-quoted.
var kvPassword = regexp.MustCompile(`(?i)(\bpass(?:word|wd)?\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)`)

// conservative handles a string that is not a URL: it is withheld when it
// may hold a password.
func conservative(s string) string {
	if strings.Contains(s, "@") || kvPassword.MatchString(s) {
		return Withheld
	}
	return s
}

func isScheme(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Args returns a copy of a command line with the password of every
// database URL in it masked: a bare argument, a --flag=URL and a
// NAME=URL (as --resource takes) alike.
func Args(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = arg(a)
	}
	return out
}

func arg(a string) string {
	if !mayHoldSecret(a) {
		return a
	}
	if k, v, ok := strings.Cut(a, "="); ok && isArgKey(k) && mayHoldSecret(v) {
		return k + "=" + URL(v)
	}
	return URL(a)
}

// mayHoldSecret reports whether an argument may be or hold a database URL
// with a password.
func mayHoldSecret(s string) bool {
	return strings.Contains(s, "@") || strings.Contains(s, "://") || kvPassword.MatchString(s)
}

// isArgKey reports whether k is a flag (--pg) or a resource name before
// the = of an argument.
func isArgKey(k string) bool {
	k = strings.TrimLeft(k, "-")
	if k == "" || isPasswordKey(k) {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// MinScrubbed is the shortest password Scrub replaces in free text:
// shorter ones would match ordinary words. (Scrub is a second line of
// defence: drivers do not quote passwords in their errors to begin with.)
const MinScrubbed = 4

// Scrub returns a function that replaces in any text (a driver's error,
// a server's message) every password the database URLs hold, as written,
// decoded and percent-encoded, with Mask.
func Scrub(rawURLs ...string) func(string) string {
	var pws []string
	for _, raw := range rawURLs {
		pws = append(pws, passwords(raw)...)
	}
	return Passwords(pws...)
}

// Passwords returns a function that replaces in any text every one of the
// passwords, as written, decoded and percent-encoded, with Mask: Scrub for
// a caller that holds the password itself (a parsed configuration) rather
// than its URL. Passwords shorter than MinScrubbed are left alone.
func Passwords(pws ...string) func(string) string {
	var secrets []string
	for _, pw := range pws {
		if len(pw) < MinScrubbed {
			continue
		}
		secrets = append(secrets, pw, url.QueryEscape(pw), url.PathEscape(pw))
		if dec, err := url.PathUnescape(pw); err == nil && len(dec) >= MinScrubbed {
			secrets = append(secrets, dec)
		}
	}
	// The longest first: a shorter reading may be part of a longer one.
	sort.Slice(secrets, func(i, j int) bool { return len(secrets[i]) > len(secrets[j]) })
	return func(s string) string {
		for _, pw := range secrets {
			s = strings.ReplaceAll(s, pw, Mask)
		}
		return s
	}
}

// Error returns err with scrub (Scrub's or Passwords' function) applied
// to its text. When there is nothing to hide it returns err itself, so
// errors.Is and errors.As still see its chain; otherwise the chain is
// dropped, since any error in it would show the password again.
func Error(err error, scrub func(string) string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if clean := scrub(msg); clean != msg {
		return scrubbedError(clean)
	}
	return err
}

// scrubbedError is an error whose text had a password taken out.
type scrubbedError string

func (e scrubbedError) Error() string { return string(e) }

// passwords returns the passwords s holds where URL would mask them.
func passwords(s string) []string {
	var out []string
	// What a URL parser reads, should it read a shorter password.
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			out = append(out, pw)
		}
	}
	if keywordForm.MatchString(s) && !strings.Contains(s, "://") {
		for _, m := range kvPassword.FindAllStringSubmatch(s, -1) {
			out = append(out, strings.Trim(m[2], "'"))
		}
		return out
	}
	if _, rest, ok := strings.Cut(s, "://"); ok {
		s = rest
	}
	if at := strings.LastIndex(s, "@"); at >= 0 {
		if _, pw, ok := strings.Cut(s[:at], ":"); ok {
			out = append(out, pw)
		}
		s = s[at+1:]
	}
	if _, q, ok := strings.Cut(s, "?"); ok {
		q, _, _ = strings.Cut(q, "#")
		for _, p := range strings.Split(q, "&") {
			if k, v, _ := strings.Cut(p, "="); isPasswordKey(k) {
				out = append(out, v)
			}
		}
	}
	return out
}

// Ambiguous reports whether a scheme://user:password@host URL has an @ in
// its path, fragment or a query parameter's name: a password with an
// unencoded @ : / # or ? in it. URL masks all of it, but a URL parser
// (the drivers') reads another password, host or database from it, and
// shows the rest of the password as part of those in its errors. Such a
// URL must be refused, with its password percent-encoded as the fix.
func Ambiguous(s string) bool {
	if scheme, _, ok := strings.Cut(s, "://"); !ok || !isScheme(scheme) {
		return false
	}
	u, err := url.Parse(s)
	if err != nil {
		return false // unparseable: the drivers refuse it and show none of it
	}
	if strings.Contains(u.Path, "@") || strings.Contains(u.Fragment, "@") || strings.Contains(u.Opaque, "@") {
		return true
	}
	for _, p := range strings.Split(u.RawQuery, "&") {
		if k, _, _ := strings.Cut(p, "="); strings.Contains(k, "@") {
			return true
		}
	}
	return false
}
