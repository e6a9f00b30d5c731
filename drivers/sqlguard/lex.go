package sqlguard

import "strings"

// mode is one way the server may read the text, by session settings the
// guard cannot see: a set of bits.
type mode uint8

const (
	modeDefault mode = 0 // PostgreSQL standard_conforming_strings=on; MySQL's default sql_mode

	// PostgreSQL standard_conforming_strings=off: '…' takes backslash escapes.
	modePGBackslash mode = 1 << 0

	// MySQL: '…' takes no backslash escapes (NO_BACKSLASH_ESCAPES).
	modeMySingleRaw mode = 1 << 0
	// MySQL: "…" takes no backslash escapes (NO_BACKSLASH_ESCAPES, or
	// ANSI_QUOTES, which makes it an identifier).
	modeMyDoubleRaw mode = 1 << 1
	// MariaDB sql_mode MSSQL: [ … ] is an identifier, ]] escaping ].
	modeMyBrackets mode = 1 << 2
)

func (m mode) String() string {
	switch {
	case m == modeDefault:
		return ""
	case m == modePGBackslash:
		// (Only PostgreSQL passes use it; the bit is MySQL's
		// modeMySingleRaw too, which never comes alone.)
		return "with standard_conforming_strings=off"
	}
	var parts []string
	if m&modeMySingleRaw != 0 {
		parts = append(parts, "NO_BACKSLASH_ESCAPES")
	} else if m&modeMyDoubleRaw != 0 {
		parts = append(parts, "ANSI_QUOTES")
	}
	if m&modeMyBrackets != 0 {
		parts = append(parts, "MSSQL")
	}
	return "with sql_mode " + strings.Join(parts, ",")
}

type tokKind uint8

const (
	tkWord   tokKind = iota + 1 // keyword or bare identifier (or number)
	tkQuoted                    // quoted identifier: "…" (PostgreSQL, ANSI_QUOTES), `…` (MySQL)
	tkString                    // string literal of any form
	tkParam                     // placeholder: $1, ?
	tkPunct                     // any other single byte
)

type token struct {
	start, end int32
	kind       tokKind
}

// maxToks is how many leading tokens of a statement are kept: enough for
// the longest pattern classified (CREATE OR REPLACE TEMPORARY TABLE).
const maxToks = 6

// scanner reads a text in one dialect and one mode in a single pass,
// classifying each statement when its end is reached. It allocates nothing
// unless it refuses (or out is set).
type scanner struct {
	d     Dialect
	m     mode
	src   string
	nargs int
	out   *[]Statement

	// modeDependent: a backslash was met inside a quoted string whose
	// reading depends on the mode (set by the default mode's pass).
	modeDependent bool
	// inExec: inside a MySQL executable comment /*! … */, whose content
	// the server runs as code.
	inExec bool
	// placeholders counts the placeholder tokens read as code.
	placeholders int

	// The statement being read.
	index   int // its number in the text
	stStart int // byte offset of its first token (-1 before it)
	ntok    int // tokens seen (kept up to maxToks)
	toks    [maxToks]token
	flags   stmtFlags
	prev    token  // the statement's previous token
	sawFor  bool   // a FOR of SET STATEMENT … FOR was met
	pending *Error // a refusal found before the statement's end
}

// stmtFlags marks words met anywhere in a SET statement that make it
// forbidden wherever they stand (SET a=1, autocommit=0).
type stmtFlags uint8

const (
	flagAutocommit stmtFlags = 1 << iota // autocommit
	flagCharset                          // names, charset, character, character_set_client, client_encoding
	flagSetStmt                          // MariaDB SET STATEMENT … FOR: the statement after FOR is classified afresh
)

func (s *scanner) refuse(kind error, off int, head, reason string) *Error {
	return &Error{Dialect: s.d, Kind: kind, Statement: s.index, Offset: off, Head: head, Reason: reason, Reading: s.m.String()}
}

// unterminated refuses an unterminated construct in the plain reading. In
// another reading it ends the pass without a refusal: the server, were it
// in that mode, would fail the statement (and, for PostgreSQL, the whole
// text) with a syntax error, and every statement before it was classified.
func (s *scanner) unterminated(off int, what string) error {
	if s.m != modeDefault {
		return errStop
	}
	return s.refuse(ErrUnreadable, off, what, "unterminated: the server would fail it, and the guard cannot know how it would read the rest")
}

// errStop ends a pass without a refusal.
var errStop = &Error{}

func (s *scanner) run() error {
	s.stStart = -1
	err := s.lex()
	if err == errStop {
		return nil
	}
	if err == nil && s.nargs > 0 && placeholderLike(s.d, s.src) != s.placeholders {
		what := "'?'"
		if s.d == Postgres {
			what = "'$' and a digit"
		}
		return &Error{Dialect: s.d, Kind: ErrUnreadable, Statement: -1, Offset: -1, Head: what,
			Reason: "with arguments, " + what + " may appear only as a placeholder (not inside a string, comment or identifier): a driver interpolating arguments on the client could splice one there; pass the text as an argument", Reading: s.m.String()}
	}
	return err
}

// Byte classes, by table: the lexer's inner loops test one byte at a time.
const (
	clSpace      = 1 << iota // ' ', \t, \n, \r, \f, \v
	clIdentStart             // letters, '_', and every byte >= 0x80: both servers treat the bytes of multibyte characters as identifier characters
	clDigit                  // 0-9
	clIdentCont              // clIdentStart, clDigit and '$': PostgreSQL and MySQL both continue identifiers with them
)

var class = func() (t [256]uint8) {
	for _, c := range []byte(" \t\n\r\f\v") {
		t[c] |= clSpace
	}
	for c := 0; c < 256; c++ {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80 {
			t[c] |= clIdentStart | clIdentCont
		}
		if c >= '0' && c <= '9' {
			t[c] |= clDigit | clIdentCont
		}
	}
	t['$'] |= clIdentCont
	return t
}()

func isSpace(c byte) bool      { return class[c]&clSpace != 0 }
func isIdentStart(c byte) bool { return class[c]&clIdentStart != 0 }
func isDigit(c byte) bool      { return class[c]&clDigit != 0 }
func isIdentCont(c byte) bool  { return class[c]&clIdentCont != 0 }

func (s *scanner) lex() error {
	src := s.src
	n := len(src)
	i := 0
	for i < n {
		c := src[i]
		switch {
		case isSpace(c):
			i++
		case c == ';':
			if s.inExec {
				return s.refuse(ErrUnreadable, i, "/*! ; */", "a statement separator inside an executable comment: MariaDB and MySQL disagree on where the comment ends")
			}
			if err := s.endStatement(i); err != nil {
				return err
			}
			i++
		case c == '\'':
			j, err := s.quoted(i, '\'', s.backslashInSingle(), true)
			if err != nil {
				return err
			}
			s.add(i, j, tkString)
			i = j
		case c == '"':
			kind := tkQuoted
			bs, dep := false, false
			if s.d == MySQL {
				// A string, or under ANSI_QUOTES an identifier: it is
				// kept as a string token either way (the SET checks read
				// its content as a name too).
				kind, bs, dep = tkString, s.m&modeMyDoubleRaw == 0, true
			}
			j, err := s.quoted(i, '"', bs, dep)
			if err != nil {
				return err
			}
			s.add(i, j, kind)
			i = j
		default:
			var (
				j   int
				err error
			)
			if s.d == Postgres {
				j, err = s.lexPG(i)
			} else {
				j, err = s.lexMy(i)
			}
			if err != nil {
				return err
			}
			i = j
		}
	}
	if s.inExec {
		return s.unterminated(n, "/*!")
	}
	return s.endStatement(n)
}

// backslashInSingle reports whether a backslash escapes in '…' strings.
func (s *scanner) backslashInSingle() bool {
	if s.d == Postgres {
		return s.m == modePGBackslash
	}
	return s.m&modeMySingleRaw == 0
}

// quoted scans a quoted string or identifier opening at i and closed by q,
// where a doubled q stands for itself and, if backslash, a backslash
// escapes the next byte. modeDep says whether this construct reads
// differently in another mode when it holds a backslash. It returns the
// offset just past the closing quote.
func (s *scanner) quoted(i int, q byte, backslash, modeDep bool) (int, error) {
	src := s.src
	j := i + 1
	for {
		k := indexQuoteOrBackslash(src[j:], q)
		if k < 0 {
			what := "string"
			if q != '\'' {
				what = "quoted " + string(q)
			}
			return 0, s.unterminated(i, what)
		}
		j += k
		if src[j] == '\\' {
			if modeDep && s.m == modeDefault {
				s.modeDependent = true
			}
			if backslash {
				j += 2
				if j > len(src) {
					return 0, s.unterminated(i, "string")
				}
				continue
			}
			j++
			continue
		}
		// src[j] == q
		if j+1 < len(src) && src[j+1] == q {
			j += 2
			continue
		}
		return j + 1, nil
	}
}

// indexQuoteOrBackslash returns the index of the first q or '\\' in s, or -1.
func indexQuoteOrBackslash(s string, q byte) int {
	for k := 0; k < len(s); k++ {
		if c := s[k]; c == q || c == '\\' {
			return k
		}
	}
	return -1
}

// placeholderLike counts the sequences in t a driver may take for a
// placeholder: every '?' (go-sql-driver), every '$' before a digit (pgx).
func placeholderLike(d Dialect, t string) int {
	if d == MySQL {
		return strings.Count(t, "?")
	}
	c := 0
	for k := 0; k+1 < len(t); k++ {
		if t[k] == '$' && isDigit(t[k+1]) {
			c++
		}
	}
	return c
}

// add records a token of the current statement.
func (s *scanner) add(start, end int, kind tokKind) {
	if s.stStart < 0 {
		if kind == tkPunct && s.src[start] == '(' {
			// Leading parentheses do not hide a statement's keyword.
			return
		}
		s.stStart = start
	}
	if kind == tkWord && s.d == MySQL && s.flags&flagSetStmt != 0 && eqKw(s.src[start:end], "FOR") {
		// MariaDB SET STATEMENT var=value[, …] FOR statement: what
		// follows FOR is a statement of its own. A value may hold a FOR
		// (a subquery … FOR UPDATE) and so may the statement (FLUSH
		// TABLES t FOR EXPORT): what follows each FOR is classified.
		if s.sawFor && s.pending == nil {
			s.pending = s.classify()
		}
		s.sawFor = true
		s.ntok = 0
		return
	}
	if s.ntok > 0 && s.isSet() && (kind == tkWord || kind == tkQuoted || kind == tkString && s.src[start] == '"' && s.nameFollows()) {
		// A "…" string where a name may stand too: under ANSI_QUOTES it
		// is one.
		s.flags |= setFlags(s.d, s.src, start, end, kind)
	}
	s.prev = token{int32(start), int32(end), kind}
	if s.ntok < maxToks {
		s.toks[s.ntok] = token{int32(start), int32(end), kind}
		if s.ntok == 1 && s.d == MySQL && s.isSet() && kind == tkWord && eqKw(s.src[start:end], "STATEMENT") {
			s.flags |= flagSetStmt
		}
	}
	s.ntok++
}

// nameFollows reports whether, in a SET statement, the token after the
// previous one may be a setting's name: after SET, ',', '.', '@@' or a
// scope word.
func (s *scanner) nameFollows() bool {
	p := s.prev
	w := s.src[p.start:p.end]
	switch p.kind {
	case tkPunct:
		return w == "," || w == "." || w == "@"
	case tkWord:
		return eqKw(w, "SET") || eqKw(w, "SESSION") || eqKw(w, "LOCAL") || eqKw(w, "GLOBAL") || eqKw(w, "PERSIST") || eqKw(w, "PERSIST_ONLY")
	}
	return false
}

func (s *scanner) isSet() bool {
	t := s.toks[0]
	return t.kind == tkWord && eqKw(s.src[t.start:t.end], "SET")
}

// setFlags classifies a word of a SET statement.
func setFlags(d Dialect, src string, start, end int, kind tokKind) stmtFlags {
	w := src[start:end]
	if kind != tkWord {
		w = w[1 : len(w)-1]
	} else if start > 0 && src[start-1] == '@' && (start < 2 || src[start-2] != '@') {
		// A MySQL user variable (@autocommit) is not the setting.
		return 0
	}
	switch {
	case eqKw(w, "AUTOCOMMIT"):
		return flagAutocommit
	case eqKw(w, "NAMES"), eqKw(w, "CLIENT_ENCODING"):
		return flagCharset
	case d == MySQL && (eqKw(w, "CHARSET") || eqKw(w, "CHARACTER") || eqKw(w, "CHARACTER_SET_CLIENT")):
		return flagCharset
	}
	return 0
}

// eqKw reports whether w is the upper-case ASCII keyword kw, ignoring ASCII
// case only (as both servers match keywords).
func eqKw(w, kw string) bool {
	if len(w) != len(kw) {
		return false
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != kw[i] {
			return false
		}
	}
	return true
}

// lexPG reads one PostgreSQL construct at i (not whitespace, ';', or a
// quote handled by lex) and returns the offset past it.
func (s *scanner) lexPG(i int) (int, error) {
	src := s.src
	n := len(src)
	c := src[i]
	switch {
	case c == '-' && i+1 < n && src[i+1] == '-':
		// A line comment ends at a newline or carriage return. (PostgreSQL
		// cuts an operator before "--", so this holds anywhere in code.)
		j := i + 2
		for j < n && src[j] != '\n' && src[j] != '\r' {
			j++
		}
		return j, nil
	case c == '/' && i+1 < n && src[i+1] == '*':
		// Block comments nest.
		depth, j := 1, i+2
		for depth > 0 {
			if j+1 >= n {
				return 0, s.unterminated(i, "/*")
			}
			switch {
			case src[j] == '/' && src[j+1] == '*':
				depth++
				j += 2
			case src[j] == '*' && src[j+1] == '/':
				depth--
				j += 2
			default:
				j++
			}
		}
		return j, nil
	case (c == 'e' || c == 'E') && i+1 < n && src[i+1] == '\'':
		// E'…': backslash escapes whatever standard_conforming_strings
		// says. (Only at a token's start: xe'…' is xe then '…'.)
		j, err := s.quoted(i+1, '\'', true, false)
		if err != nil {
			return 0, err
		}
		s.add(i, j, tkString)
		return j, nil
	case isIdentStart(c):
		j := i + 1
		for j < n && isIdentCont(src[j]) {
			j++
		}
		s.add(i, j, tkWord)
		return j, nil
	case isDigit(c):
		// Digits only: what follows (an identifier, '$', a quote) is read
		// as its own token, as PostgreSQL 15 does (later versions reject
		// trailing junk after a number, which only makes errors).
		j := i + 1
		for j < n && isDigit(src[j]) {
			j++
		}
		s.add(i, j, tkWord)
		return j, nil
	case c == '$':
		if i+1 < n && isDigit(src[i+1]) {
			j := i + 2
			for j < n && isDigit(src[j]) {
				j++
			}
			s.placeholders++
			s.add(i, j, tkParam)
			return j, nil
		}
		// $tag$ or $$ opens a dollar-quoted string closed by the same
		// delimiter; the tag is an identifier without '$'.
		j := i + 1
		if j < n && (isIdentStart(src[j])) {
			j++
			for j < n && (isIdentStart(src[j]) || isDigit(src[j])) {
				j++
			}
		}
		if j < n && src[j] == '$' {
			delim := src[i : j+1]
			k := strings.Index(src[j+1:], delim)
			if k < 0 {
				return 0, s.unterminated(i, "dollar quote "+delim)
			}
			end := j + 1 + k + len(delim)
			s.add(i, end, tkString)
			return end, nil
		}
		s.add(i, i+1, tkPunct)
		return i + 1, nil
	}
	s.add(i, i+1, tkPunct)
	return i + 1, nil
}

// lexMy reads one MariaDB/MySQL construct at i.
func (s *scanner) lexMy(i int) (int, error) {
	src := s.src
	n := len(src)
	c := src[i]
	switch {
	case c == '#':
		return s.lineComment(i), nil
	case c == '-' && i+1 < n && src[i+1] == '-':
		// "--" starts a comment only before whitespace or a control
		// character (or at the end); a high byte might be whitespace in
		// the connection's character set: refuse rather than guess.
		if i+2 >= n || src[i+2] <= ' ' || src[i+2] == 0x7f {
			return s.lineComment(i), nil
		}
		if src[i+2] >= 0x80 {
			return 0, s.refuse(ErrUnreadable, i, "--", `"--" before a non-ASCII byte: a comment or not, depending on the character set`)
		}
		s.add(i, i+1, tkPunct)
		return i + 1, nil
	case c == '/' && i+1 < n && src[i+1] == '*':
		return s.blockCommentMy(i)
	case c == '*' && s.inExec && i+1 < n && src[i+1] == '/':
		s.inExec = false
		return i + 2, nil
	case c == '[':
		if s.m&modeMyBrackets == 0 {
			// Under sql_mode MSSQL (MariaDB) it would open an identifier.
			if s.m == modeDefault {
				s.modeDependent = true
			}
			s.add(i, i+1, tkPunct)
			return i + 1, nil
		}
		j, err := s.quoted(i, ']', false, false)
		if err != nil {
			return 0, err
		}
		s.add(i, j, tkQuoted)
		return j, nil
	case c == '`':
		j, err := s.quoted(i, '`', false, false)
		if err != nil {
			return 0, err
		}
		s.add(i, j, tkQuoted)
		return j, nil
	case c == '?':
		s.placeholders++
		s.add(i, i+1, tkParam)
		return i + 1, nil
	case isIdentCont(c):
		// MySQL identifiers may start with a digit; numbers read as words.
		j := i + 1
		for j < n && isIdentCont(src[j]) {
			j++
		}
		s.add(i, j, tkWord)
		return j, nil
	}
	s.add(i, i+1, tkPunct)
	return i + 1, nil
}

// lineComment skips a MySQL line comment: to the next newline only.
func (s *scanner) lineComment(i int) int {
	j := strings.IndexByte(s.src[i:], '\n')
	if j < 0 {
		j = len(s.src)
	} else {
		j += i
	}
	return j
}

// blockCommentMy reads a MySQL comment opening at i. Regular comments do
// not nest. /*! … */ (no version) is code on every server: its content is
// read as code. Version-conditional comments (/*!50700 …, /*M! …, run by
// MariaDB only, /*M!100500 …) run or not by the server's version, and a
// skipped one may hold a nested comment: the guard cannot know, and
// refuses them. Optimizer hints /*+ … */ are read by a lexer of their own
// that honours quotes: refused if they hold one.
func (s *scanner) blockCommentMy(i int) (int, error) {
	src := s.src
	n := len(src)
	body := i + 2
	if body < n && src[body] == '!' || body+1 < n && (src[body] == 'M' || src[body] == 'm') && src[body+1] == '!' {
		bang := body
		if src[body] != '!' {
			bang++
		}
		if s.inExec {
			return 0, s.refuse(ErrUnreadable, i, "/*!", "an executable comment inside another")
		}
		if bang != body || bang+1 < n && isDigit(src[bang+1]) {
			e := bang + 1
			for e < n && e < bang+8 && isDigit(src[e]) {
				e++
			}
			return 0, s.refuse(ErrUnreadable, i, src[i:e], "a version-conditional comment: whether the server runs its content depends on its version")
		}
		s.inExec = true
		return bang + 1, nil
	}
	k := strings.Index(src[body:], "*/")
	if k < 0 {
		return 0, s.unterminated(i, "/*")
	}
	end := body + k + 2
	if body < n && src[body] == '+' && strings.ContainsAny(src[body:end-2], "'\"`") {
		return 0, s.refuse(ErrUnreadable, i, "/*+", "an optimizer hint holding a quote: MySQL's hint lexer may end it elsewhere")
	}
	return end, nil
}
