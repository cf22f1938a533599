#!/usr/bin/env python3
# Writes man/dicomfs.5 from SEMANTICS.md (kinds of names, the operation table, durability,
# File IDs), so the two say the same. Run it after editing SEMANTICS.md.
import os, re
root=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..')
s=open(os.path.join(root,'SEMANTICS.md')).read()
def md(t):
    # inline markdown -> mdoc-safe text: `x` -> \(lqx\(rq not needed; use plain with Sy for code? keep plain.
    t=t.strip()
    t=re.sub(r'\*\*(.+?)\*\*', r'\1', t)
    t=t.replace('`','')
    t=t.replace('\\','\\e')
    return t
def lines_of(text):
    # mdoc: a line may not start with '.' or "'"; split sentences onto new lines
    out=[]
    for sent in re.split(r'(?<=[.;:]) ', text):
        sent=sent.strip()
        if not sent: continue
        if sent[0] in ".'": sent='\\&'+sent
        out.append(sent)
    return '\n'.join(out)
def table(section):
    a=s.index(section); rest=s[a:]
    rows=[l for l in rest.split('\n')[1:] if l.startswith('|')]
    end=None
    res=[]
    for l in rest.split('\n')[1:]:
        if l.startswith('|'): res.append(l)
        elif res: break
    return [ [c for c in r.strip().strip('|').split('|')] for r in res[2:] ]
o=[]
o.append('''.\\" Generated from SEMANTICS.md by scripts/semantics_man.py: edit that, then run this.
.Dd November 23, 2026
.Dt DICOMFS 5
.Os
.Sh NAME
.Nm dicomfs
.Nd what file operations mean on a mounted DICOM File-set
.Sh DESCRIPTION
A
.Xr dicomfs 1
mount is a DICOM File-set (PS3.10): a
.Pa DICOMDIR
and the files it references by File ID.
Reading it is reading the medium.
Writing it is the File-set Updater's two operations: M-WRITE (copy an
instance in) and M-DELETE (remove one).
dicomfs keeps the
.Pa DICOMDIR
consistent after each of them.
This page says what each operation does, for each kind of name, and
which errno a refusal returns; SEMANTICS.md in the source tree has the
same table, with the test that checks each row.
.Ss Kinds of names
.Bl -tag -width Ds''')
for k,ex,what in table('## Kinds of names'):
    o.append('.It '+md(k))
    o.append(lines_of(md(what)+' Example: '+md(ex)+'.'))
o.append('.El')
o.append('''.Pp
A File ID name is a component of 1 to 8 characters from A-Z, 0-9 and _,
at most 8 levels deep (PS3.10 8.2).
.Ss Operations
Each entry is an operation, the kind of name it is applied to, what it
does, and the errno of a refusal.
.Bl -tag -width Ds''')
for op,on,res,err,test in table('## Operations'):
    head=md(op)+(' \\(em '+md(on) if md(on) else '')
    o.append('.It '+head)
    body=md(res) if md(res) else 'See the entries below.'
    o.append(lines_of(body))
    if md(err):
        e=md(err)
        e=re.sub(r'\b(E[A-Z]+)\b', r'\n.Er \1\n', e)
        e='\n'.join(x.strip() for x in e.split('\n') if x.strip())
        o.append('.Pp\nRefused with:\n'+e)
o.append('.El')
b=s.index('Every refusal'); e=s.index('## Durability')
o.append('.Pp\n'+lines_of(md(' '.join(s[b:e].split()))))
d=s.index('## Durability'); f=s.index('## Derived keys')
o.append('.Ss Durability\n'+lines_of(md(' '.join(s[d+len('## Durability'):f].split()))))
g=s.index('## File IDs'); h=s.index('## On FAT media')
o.append('.Ss File IDs\n'+lines_of(md(' '.join(s[g+len('## File IDs'):h].split()))))
o.append('.Ss On FAT media\nEverything above holds on a FAT12/16/32 volume (an image file or a block\ndevice) too; in addition:\n.Bl -tag -width Ds')
for what,res in table('## On FAT media'):
    o.append('.It '+md(what))
    r=re.sub(r'\b(E[A-Z]+)\b', r'\n.Er \1\n', md(res)).replace('\n; ', ' ;\n')
    o.append('\n'.join(lines_of(x.strip()) if not x.startswith('.Er') else x for x in r.split('\n') if x.strip()))
o.append('.El')
o.append('''.Ss Errors
.Bl -tag -width Er
.It Er EINVAL
Not an acceptable DICOM instance (not Part-10, truncated, UIDs that
differ from the meta information, a transfer syntax the profile does not
allow), or a name that cannot go where it was made.
.It Er EEXIST
Another instance with the same SOP Instance UID, or the File ID, is on
the medium.
.It Er EPERM
The DICOMDIR, a stored instance, or a rename of a native name.
.It Er ENOSPC
The medium is full; nothing of the copy is kept.
.It Er EFBIG
An instance too large to transcode, or a file past 4 GiB - 1 on FAT.
.It Er ENOTEMPTY
rmdir of a directory that still holds something.
.It Er EROFS
Any write on a read-only mount.
.El
.Sh SEE ALSO
.Xr dicomfs 1 ,
.Xr mount.fuse.dicomfs 8
.Sh STANDARDS
DICOM PS3.10, Media Storage and File Format for Media Interchange;
DICOM PS3.3 Annex F, Basic Directory Information Object Definition.''')
open(os.path.join(root,'man/dicomfs.5'),'w').write('\n'.join(o)+'\n')
