# The tutorial's upload header (自定制报头), server side. The tutorial gives
# it as a snippet; this completes it with the custom-header client's r_s
# receive loop, storing by base name and checking the md5:
#   python3 upload_server.py [PORT] [DIR]
import socket,struct,json
import hashlib,os,sys  # skiff: to store and check the file; port and dir from argv
PORT=int(sys.argv[1]) if len(sys.argv) > 1 else 8080
ROOT=sys.argv[2] if len(sys.argv) > 2 else '.'
phone=socket.socket(socket.AF_INET,socket.SOCK_STREAM)
phone.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
phone.bind(('127.0.0.1',PORT))
phone.listen(5)
while True:
    s,addr=phone.accept()
    #服务端开始接收
    head_len_bytes=s.recv(4) #先收报头4个bytes,得到报头长度的字节格式
    x=struct.unpack('i',head_len_bytes)[0] #提取报头的长度
    head_bytes=s.recv(x) #按照报头长度x,收取报头的bytes格式
    header=json.loads(head_bytes.decode('utf-8')) #提取报头  # skiff: decode the bytes received
    #最后根据报头的内容提取真实的数据
    real_data_len=header['file_size']
    r_s=0
    data=b''
    while r_s < real_data_len:
        r_d=s.recv(1024)
        data+=r_d
        r_s+=len(r_d)
    file_name=os.path.basename(header['file_name'])
    if hashlib.md5(data).hexdigest() == header['md5']:
        with open(os.path.join(ROOT,file_name),'wb') as f:
            f.write(data)
        print('stored',file_name,real_data_len)
    else:
        print('md5 mismatch',file_name)
    s.close()
