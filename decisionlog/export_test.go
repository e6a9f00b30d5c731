package decisionlog

import (
	"errors"
	"sync"
)

// OpenFileLogFailable opens a FileLog whose files fail the next write
// after fail(err) is called, for the conformance suite (package
// decisionlog_test cannot reach the unexported hooks).
func OpenFileLogFailable(dir string, opts FileLogOptions) (*FileLog, func(error), error) {
	var mu sync.Mutex
	var next error
	opts.hooks = &fileLogHooks{wrapFile: func(f logFile) logFile {
		return &failingFile{logFile: f, take: func() error {
			mu.Lock()
			defer mu.Unlock()
			err := next
			next = nil
			return err
		}}
	}}
	l, err := OpenFileLog(dir, opts)
	return l, func(err error) {
		mu.Lock()
		defer mu.Unlock()
		next = errors.Join(err)
	}, err
}

type failingFile struct {
	logFile
	take func() error
}

func (f *failingFile) Write(p []byte) (int, error) {
	if err := f.take(); err != nil {
		return 0, err
	}
	return f.logFile.Write(p)
}
