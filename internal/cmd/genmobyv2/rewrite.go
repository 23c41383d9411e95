package main

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// translatePath returns the import path that replaces p in the generated
// module, and whether p is translated at all. Packages translated name by
// name (see movedNames) are not: they have no single replacement.
func translatePath(p string) (string, bool) {
	if isSourceModulePath(p) {
		return targetModule + strings.TrimPrefix(p, sourceModule), true
	}
	if q, ok := movedPackages[p]; ok {
		return q, true
	}
	return p, !isDockerPath(p)
}

// isSourceModulePath reports whether p is a package of the source module.
func isSourceModulePath(p string) bool {
	return p == sourceModule || strings.HasPrefix(p, sourceModule+"/")
}

// isDockerPath reports whether p belongs to the docker/docker module, which
// the generated module must not import.
func isDockerPath(p string) bool {
	return p == "github.com/docker/docker" || strings.HasPrefix(p, "github.com/docker/docker/")
}

// translatedByName reports whether some names of package p are in movedNames.
func translatedByName(p string) bool {
	for q := range movedNames {
		if q.path == p {
			return true
		}
	}
	return false
}

// packageName returns the name that package p declares, as far as the
// generator needs to know it: packageNames, else defaultName.
func packageName(p string) string {
	if n, ok := packageNames[p]; ok {
		return n
	}
	return defaultName(p)
}

var majorVersion = regexp.MustCompile(`^v[0-9]+$`)

// defaultName is the name a reader (or goimports) assumes package p has: the
// last element of its path that is not a major version, without a "go-"
// prefix, dashes or dots. An import whose local name differs from it spells
// the name out.
func defaultName(p string) string {
	base := path.Base(p)
	if majorVersion.MatchString(base) {
		base = path.Base(path.Dir(p))
	}
	base = strings.TrimPrefix(base, "go-")
	return strings.NewReplacer("-", "", ".", "").Replace(base)
}

// newImport is one import of a translated file.
type newImport struct {
	name     string
	path     string
	explicit bool // printed with its name
}

// importSpec is one import of a file: its local name (the name its
// qualified identifiers use; "_" or "." for those forms) and path.
type importSpec struct {
	name     string
	path     string
	explicit bool // the source spelled the name out
}

// translate rewrites the Go source src, read from the repository file
// relPath, into its moby v2 flavour: import paths, qualified identifiers,
// then import paths and prose in comments and string literals. The result
// is gofmt'ed and carries the generated-code header.
func translate(relPath string, src []byte) ([]byte, error) {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, relPath, src, parser.ParseComments)
	if err != nil {
		return nil, err
	}

	// The file's imports. Only those of docker/docker and of this module
	// are translated; the others stay exactly as written.
	var translated []*importSpec
	var untouched []*newImport
	byName := map[string]*importSpec{} // translated, by local name
	for _, s := range file.Imports {
		p, err := strconv.Unquote(s.Path.Value)
		if err != nil {
			return nil, err
		}
		if !isDockerPath(p) && !isSourceModulePath(p) {
			ni := &newImport{name: defaultName(p), path: p}
			if s.Name != nil {
				ni.name, ni.explicit = s.Name.Name, true
			}
			untouched = append(untouched, ni)
			continue
		}
		is := &importSpec{path: p, name: packageName(p)}
		if s.Name != nil {
			is.name, is.explicit = s.Name.Name, true
		}
		if is.name == "_" || is.name == "." {
			if _, ok := translatePath(p); !ok {
				return nil, fmt.Errorf("%s: %s import of %q has no moby v2 translation", relPath, is.name, p)
			}
		}
		translated = append(translated, is)
		byName[is.name] = is
	}

	// Every identifier that is not the package part of a qualified
	// identifier: a new import's name must differ from all of them.
	taken := map[string]bool{}
	type qualifiedRef struct {
		sel *ast.SelectorExpr
		imp *importSpec
	}
	var refs []qualifiedRef
	pkgIdents := map[*ast.Ident]bool{}
	ast.Inspect(file, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if x, ok := sel.X.(*ast.Ident); ok && x.Obj == nil {
				if imp := byName[x.Name]; imp != nil && imp.name != "_" && imp.name != "." {
					refs = append(refs, qualifiedRef{sel, imp})
					pkgIdents[x] = true
				}
			}
		}
		return true
	})
	ast.Inspect(file, func(n ast.Node) bool {
		if id, ok := n.(*ast.Ident); ok && !pkgIdents[id] {
			taken[id.Name] = true
		}
		return true
	})
	taken[file.Name.Name] = true

	// The imports of the translated file: the untouched ones, then the
	// translations of the others. A translated package keeps its local
	// name, which no other identifier can have; it is registered first and
	// joins the file only if a qualified identifier still uses it, so an
	// import whose every name moved elsewhere disappears. Blank and dot
	// imports always stay.
	out := untouched
	byPath := map[string]*newImport{}
	used := map[string]bool{} // local names in out or byPath
	for _, ni := range untouched {
		used[ni.name] = true
	}
	add := func(ni *newImport) {
		for _, o := range out {
			if o == ni {
				return
			}
		}
		out = append(out, ni)
	}
	for _, is := range translated {
		np, ok := translatePath(is.path)
		if is.name == "_" || is.name == "." {
			add(&newImport{name: is.name, path: np, explicit: true})
			continue
		}
		if !ok || byPath[np] != nil {
			// Translated name by name, or a second source package
			// that became the same one: its identifiers use the first.
			continue
		}
		ni := &newImport{name: is.name, path: np, explicit: is.explicit || is.name != defaultName(np)}
		byPath[np] = ni
		used[is.name] = true
	}
	// need returns the import of p, adding one under a free name.
	need := func(p string) *newImport {
		if ni := byPath[p]; ni != nil {
			return ni
		}
		preferred := preferredLocalName(p)
		name := preferred
		for i := 2; used[name] || taken[name]; i++ {
			name = preferred + strconv.Itoa(i)
		}
		ni := &newImport{name: name, path: p, explicit: name != defaultName(p)}
		byPath[p] = ni
		used[name] = true
		return ni
	}

	// Rewrite every qualified identifier.
	for _, r := range refs {
		x := r.sel.X.(*ast.Ident)
		if to, ok := movedNames[qualified{r.imp.path, r.sel.Sel.Name}]; ok {
			ni := need(to.path)
			add(ni)
			x.Name, r.sel.Sel.Name = ni.name, to.name
			continue
		}
		np, ok := translatePath(r.imp.path)
		if !ok {
			if translatedByName(r.imp.path) {
				return nil, fmt.Errorf("%s: %s.%s (%s) has no moby v2 translation in movedNames",
					fset.Position(r.sel.Pos()), x.Name, r.sel.Sel.Name, r.imp.path)
			}
			return nil, fmt.Errorf("%s: package %q has no moby v2 translation in movedPackages",
				fset.Position(r.sel.Pos()), r.imp.path)
		}
		ni := byPath[np]
		add(ni)
		x.Name = ni.name
	}

	// Rebuild the import declarations: std, then third-party, then this
	// module, each group sorted by path.
	var groups [3][]*newImport
	for _, ni := range out {
		g := 1
		switch {
		case !strings.Contains(strings.SplitN(ni.path, "/", 2)[0], "."):
			g = 0
		case ni.path == targetModule || strings.HasPrefix(ni.path, targetModule+"/"):
			g = 2
		}
		groups[g] = append(groups[g], ni)
	}
	var importBlock bytes.Buffer
	for _, g := range groups {
		if len(g) == 0 {
			continue
		}
		sort.Slice(g, func(i, j int) bool { return g[i].path < g[j].path })
		if importBlock.Len() > 0 {
			importBlock.WriteString("\n")
		}
		for _, ni := range g {
			if ni.explicit {
				importBlock.WriteString(ni.name + " ")
			}
			importBlock.WriteString(strconv.Quote(ni.path) + "\n")
		}
	}
	var decls []ast.Decl
	for _, d := range file.Decls {
		if gd, ok := d.(*ast.GenDecl); ok && gd.Tok == token.IMPORT {
			continue
		}
		decls = append(decls, d)
	}
	file.Decls = decls
	file.Imports = nil

	// Comments and string literals: import paths, qualified names, prose.
	for _, cg := range file.Comments {
		for _, c := range cg.List {
			c.Text = rewriteProse(rewriteQualifiedNames(rewritePaths(c.Text), byName))
		}
	}
	ast.Inspect(file, func(n ast.Node) bool {
		if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			lit.Value = rewritePaths(lit.Value)
		}
		return true
	})

	var body bytes.Buffer
	if err := format.Node(&body, fset, file); err != nil {
		return nil, err
	}
	res := body.Bytes()
	if importBlock.Len() > 0 {
		// Splice the import block in after the package clause.
		f2, err := parser.ParseFile(token.NewFileSet(), relPath, res, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			return nil, err
		}
		end := int(f2.Name.End()) - 1
		res = append(res[:end:end], append([]byte("\n\nimport (\n"+importBlock.String()+")\n"), res[end:]...)...)
	}
	header := fmt.Sprintf("// Code generated by %s from %s. DO NOT EDIT.\n\n", generatorDir, relPath)
	res = append([]byte(header), res...)
	formatted, err := format.Source(res)
	if err != nil {
		return nil, fmt.Errorf("%s: formatting the translation: %w\n%s", relPath, err, res)
	}
	return formatted, nil
}

// preferredLocalName is the name a new import of p is given when it is free.
func preferredLocalName(p string) string {
	if n, ok := preferredNames[p]; ok {
		return n
	}
	return packageName(p)
}

// textPaths are the import paths rewritten in comments and string literals,
// longest first, so that a package path wins over its module's path.
var textPaths = func() [][2]string {
	m := map[string]string{
		sourceModule:                                       targetModule,
		"github.com/docker/docker":                         "github.com/moby/moby/v2",
		"github.com/docker/docker/api/types":               "github.com/moby/moby/api/types",
		"github.com/docker/docker/api/types/swarm/runtime": mobySwarm,
	}
	for k, v := range movedPackages {
		m[k] = v
	}
	var out [][2]string
	for k, v := range m {
		out = append(out, [2]string{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i][0]) > len(out[j][0]) })
	return out
}()

// rewritePaths replaces every known import path in s that is neither
// preceded nor followed by more path (a letter, digit, '_', '-' or '/'),
// except that this module's path is rewritten with its subpaths too.
func rewritePaths(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		matched := false
		if i == 0 || !isPathByte(s[i-1]) {
			for _, pr := range textPaths {
				if !strings.HasPrefix(s[i:], pr[0]) {
					continue
				}
				j := i + len(pr[0])
				if j < len(s) && isPathByte(s[j]) && (pr[0] != sourceModule || s[j] != '/') {
					continue
				}
				b.WriteString(pr[1])
				i = j
				matched = true
				break
			}
		}
		if !matched {
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String()
}

func isPathByte(c byte) bool {
	return c == '_' || c == '-' || c == '/' ||
		'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

var qualifiedInText = regexp.MustCompile(`\b([A-Za-z_][A-Za-z0-9_]*)\.([A-Z][A-Za-z0-9_]*)\b`)

// rewriteQualifiedNames rewrites pkg.Name in prose when Name moved: pkg is a
// local name of the file's imports, or the usual name of a source package.
func rewriteQualifiedNames(s string, byName map[string]*importSpec) string {
	return qualifiedInText.ReplaceAllStringFunc(s, func(m string) string {
		sub := qualifiedInText.FindStringSubmatch(m)
		pkg, name := sub[1], sub[2]
		for q, to := range movedNames {
			if q.name != name {
				continue
			}
			if imp := byName[pkg]; imp != nil && imp.path == q.path || byName[pkg] == nil && packageName(q.path) == pkg {
				return preferredLocalName(to.path) + "." + to.name
			}
		}
		return m
	})
}

// rewriteProse applies proseReplacements.
func rewriteProse(s string) string {
	for _, r := range proseReplacements {
		s = strings.ReplaceAll(s, r.old, r.new)
	}
	return s
}
